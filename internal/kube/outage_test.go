package kube_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/config"
	"github.com/pipeops/pipeops-vm-agent/internal/health"
	"github.com/pipeops/pipeops-vm-agent/internal/kube"
	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
)

func TestStoppingTheAPIServerTurnsReadyFalseWithTheReasonAndRecovers(t *testing.T) {
	t.Parallel()
	p := kubetest.PrivateCluster(t, false)
	tr := health.New(nil)
	tr.Require(health.Kubernetes, "connecting to the Kubernetes API")
	m := startManager(t, p.Env, config.Kubernetes{Namespace: "pipeops-system"}, kube.WithHealth(tr),
		kube.WithIntervals(100*time.Millisecond, 100*time.Millisecond, 300*time.Millisecond))
	ready := func() bool { ok, _ := tr.Ready(); return ok }
	eventually(t, 60*time.Second, "ready", ready)
	ctx := context.Background()
	v, err := m.Version(ctx)
	if err != nil || !strings.HasPrefix(v, "v1.") {
		t.Fatalf("Version = %q, %v", v, err)
	}

	p.StopAPIServer(t)
	eventually(t, 30*time.Second, "not ready", func() bool { return !ready() })
	c := condition(tr, health.Kubernetes)
	if c.OK || !strings.HasPrefix(c.Reason, "API server unreachable: ") {
		t.Fatalf("condition = %+v; want not OK with reason \"API server unreachable: ...\"", c)
	}
	if _, reasons := tr.Ready(); len(reasons) != 1 || !strings.HasPrefix(reasons[0], "kubernetes: API server unreachable") {
		t.Fatalf("readiness reasons = %q", reasons)
	}
	if v, err := m.Version(ctx); err == nil {
		t.Fatalf("Version = %q while the API server is down; want an error, never a guess", v)
	}
	if st := m.Status(ctx); st.Reachable || !strings.Contains(st.LastError, "unreachable") {
		t.Fatalf("Status = %+v while down", st)
	}
	// Credentials stay available: the control plane may still hold a session.
	if tok, _ := credentials(t, m); tok == "" {
		t.Fatal("credentials lost during the outage")
	}

	p.StartAPIServer(t)
	eventually(t, 60*time.Second, "ready again after the restart", ready)
	if v2, err := m.Version(ctx); err != nil || v2 != v {
		t.Fatalf("Version after recovery = %q, %v; want %q", v2, err, v)
	}
	if st := m.Status(ctx); !st.Reachable || st.LastError != "" || st.Server != p.Config.Host {
		t.Fatalf("Status after recovery = %+v", st)
	}
}
