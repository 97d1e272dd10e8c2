package hygiene

import (
	"os/exec"
	"strings"
	"testing"
)

// TestPipeopsctlStaysSmall keeps the CLI small and fast to start: it
// reaches the agent through the local API instead of linking the agent's
// heavy libraries, and reads the journal through journalctl.
func TestPipeopsctlStaysSmall(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", module+"/cmd/pipeopsctl").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	const viaAPI = "reach it through the local API instead"
	banned := []struct{ prefix, why string }{
		{"k8s.io/", viaAPI},
		{"helm.sh/", viaAPI},
		// Both yamux implementations: the agent's tunnel runs libp2p's, the
		// reference control plane hashicorp's.
		{"github.com/hashicorp/yamux", viaAPI},
		{"github.com/libp2p/go-yamux", viaAPI},
		{"github.com/gorilla/websocket", viaAPI},
		// internal/logging links go-systemd's journal: config, which the CLI
		// needs, must not import logging (config.ParseLevel is why).
		{"github.com/coreos/go-systemd/", "only the agent talks to systemd's journal and notify sockets"},
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, b := range banned {
			if strings.HasPrefix(dep, b.prefix) {
				t.Errorf("pipeopsctl links %s; %s", dep, b.why)
			}
		}
	}
}
