package daemon

import (
	"context"
	"errors"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/config"
	"github.com/pipeops/pipeops-vm-agent/internal/devplane"
	"github.com/pipeops/pipeops-vm-agent/internal/ha"
	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

// TestTwoHAAgentsInProcessShareOneIdentityAcrossAStopAndAStepDown runs two
// whole agents with ha.enabled in this process (under -race in CI) against
// the reference control plane: one links, the other is a standby; stopping
// the leader hands over with the same identity and no new registration;
// a step-down ends the new leader's term with ha.ErrTermEnded (the binary
// restarts in place on it).
func TestTwoHAAgentsInProcessShareOneIdentityAcrossAStopAndAStepDown(t *testing.T) {
	env := kubetest.Cluster(t)
	plane := devplane.New(devplane.Config{Tokens: []string{"ha-token"}})
	srv := httptest.NewServer(plane.Handler())
	defer srv.Close()
	type running struct {
		d      *Daemon
		cancel context.CancelFunc
		done   chan error
	}
	start := func(name string) *running {
		d := newInProcessAgent(t, env, srv.URL, "ha-token", func(c *config.Config) {
			c.Agent.ID = "agent-" + name
			c.HA = config.HA{Enabled: true, Identity: name, LeaseDuration: config.D(2 * time.Second),
				RenewDeadline: config.D(1500 * time.Millisecond), RetryPeriod: config.D(250 * time.Millisecond)}
		})
		ctx, cancel := context.WithCancel(context.Background())
		r := &running{d: d, cancel: cancel, done: make(chan error, 1)}
		go func() { r.done <- d.Run(ctx) }()
		t.Cleanup(func() {
			cancel()
			select {
			case <-r.done:
			case <-time.After(30 * time.Second):
				t.Error("an agent did not stop")
			}
		})
		return r
	}
	a, b := start("node-a"), start("node-b")
	role := func(r *running) string {
		st := r.d.Status(context.Background())
		if st.HA == nil {
			return ""
		}
		return st.HA.Role
	}
	connected := func() bool {
		cs := plane.Clusters()
		return len(cs) == 1 && cs[0].Connected && cs[0].Mode == devplane.KindGateway && cs[0].Heartbeats > 0
	}
	var lead, standby *running
	testbin.Eventually(t, 60*time.Second, "one leader linked, one standby", func() bool {
		switch {
		case role(a) == apitype.HALeader && role(b) == apitype.HAStandby:
			lead, standby = a, b
		case role(b) == apitype.HALeader && role(a) == apitype.HAStandby:
			lead, standby = b, a
		default:
			return false
		}
		return connected()
	})
	first := plane.Clusters()[0]
	// The standby keeps a copy of the shared identity (refreshed every lease duration).
	testbin.Eventually(t, 10*time.Second, "the standby shows the shared identity", func() bool {
		st := standby.d.Status(context.Background())
		return st.Link.State == "standby" && st.AgentID == first.AgentID && st.ClusterID == first.ID
	})

	lead.cancel()
	if err := <-lead.done; err != nil {
		t.Fatalf("the stopped leader's Run = %v; want nil", err)
	}
	lead.done <- nil
	testbin.Eventually(t, 30*time.Second, "the standby leads and resumed", func() bool {
		cs := plane.Clusters()
		return role(standby) == apitype.HALeader && connected() && cs[0].Connections > first.Connections
	})
	if cs := plane.Clusters(); len(cs) != 1 || cs[0].Registrations != 1 || cs[0].AgentID != first.AgentID {
		t.Fatalf("after the handover the control plane shows %+v; want one cluster, one registration, agent %s", cs, first.AgentID)
	}
	if err := standby.d.ha.elector.StepDown(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-standby.done:
		if !errors.Is(err, ha.ErrTermEnded) {
			t.Fatalf("Run after a step-down = %v; want ha.ErrTermEnded", err)
		}
		standby.done <- nil
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after a step-down")
	}
	if r := plane.Wire(); len(r.Violations) > 0 {
		t.Fatalf("wire violations: %+v", r.Violations)
	}
}
