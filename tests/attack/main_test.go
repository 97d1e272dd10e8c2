package attack

import (
	"testing"

	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
)

func TestMain(m *testing.M) { kubetest.Main(m) }
