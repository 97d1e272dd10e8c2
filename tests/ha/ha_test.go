// Package ha tests high availability across server nodes end to end: three
// real pipeops-agent processes with separate state directories and ports,
// the real API server and the reference control plane (pipeops-devplane).
package ha

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

func TestMain(m *testing.M) { kubetest.Main(m) }

// upWithOneCluster starts the agents and waits until exactly one leads and
// the control plane sees one connected cluster; it returns the leader and
// the cluster id.
func upWithOneCluster(t *testing.T, c *cluster) (*agent, string) {
	t.Helper()
	c.startAll()
	var lead *agent
	testbin.Eventually(t, 60*time.Second, "one leader, and one connected cluster on the control plane", func() bool {
		lead = c.leader()
		cl := c.only()
		return lead != nil && cl.Connected && cl.Heartbeats > 0
	}, c.describe)
	return lead, c.only().ID
}

func TestThreeAgentsConnectOnceAndAKilledLeaderIsReplacedWithTheSameIdentityWithoutRegistering(t *testing.T) {
	c := newCluster(t, 3)
	lead, id := upWithOneCluster(t, c)
	first := c.only()
	if first.Registrations != 1 || first.AgentID != "agent-"+lead.name {
		t.Fatalf("cluster %+v: want one registration by agent-%s", first, lead.name)
	}
	for _, a := range c.agents {
		if a == lead {
			continue
		}
		testbin.Eventually(t, 10*time.Second, a.name+" reports itself as a standby of "+lead.name, func() bool {
			st, err := a.status()
			return err == nil && st.HA != nil && st.HA.Role == apitype.HAStandby && st.HA.Leader == lead.name &&
				st.Link.State == "standby" && st.Ready
		}, c.describe)
		out, err := a.ctl("status")
		if err != nil || !strings.Contains(string(out), "active on "+lead.name+" since") {
			t.Errorf("pipeopsctl status on a standby = %q, %v; want \"active on %s since …\"", out, err, lead.name)
		}
	}
	testbin.Eventually(t, 20*time.Second, "proxied calls work through the leader", func() bool { return c.proxied(id) == nil })
	testbin.Eventually(t, 20*time.Second, "the leader runs route sync and monitoring", func() bool {
		st, err := lead.status()
		return err == nil && runs(st, "routes") && runs(st, "monitoring")
	})
	out, err := lead.ctl("ha", "status")
	if err != nil || !strings.Contains(string(out), "node-a") || !strings.Contains(string(out), "node-c") {
		t.Errorf("pipeopsctl ha status = %q, %v; want the three candidates", out, err)
	}
	t.Logf("pipeopsctl ha status on the leader:\n%s", out)

	killed := time.Now()
	lead.kill()
	var next *agent
	testbin.Eventually(t, 60*time.Second, "a standby takes over and resumes on the gateway", func() bool {
		next = c.leader()
		cl := c.only()
		return next != nil && next != lead && cl.Connected && cl.Connections > first.Connections
	}, c.describe)
	testbin.Eventually(t, 30*time.Second, "proxied kubectl works again", func() bool {
		_, err := c.kubectl(id, "get", "namespace", c.env.Namespace)
		return err == nil
	})
	t.Logf("kill -9 of %s: %s took over; proxied kubectl worked again %s after the kill", lead.name, next.name, time.Since(killed).Round(time.Millisecond))
	after := c.only()
	if after.ID != id || after.Registrations != 1 || after.AgentID != first.AgentID {
		t.Fatalf("after the failover the control plane shows %+v; want cluster %s, still one registration, agent id %s", after, id, first.AgentID)
	}
	if hb := after.Heartbeat(); hb.AgentID != first.AgentID || hb.ClusterID != id {
		t.Fatalf("the new leader heartbeats as agent %q cluster %q; want the shared identity %q %q", hb.AgentID, hb.ClusterID, first.AgentID, id)
	}
	testbin.Eventually(t, 20*time.Second, "route sync and monitoring run on the new leader", func() bool {
		st, err := next.status()
		return err == nil && runs(st, "routes") && runs(st, "monitoring")
	})
	for _, a := range c.agents {
		if a == lead || a == next {
			continue
		}
		st, err := a.status()
		if err != nil || runs(st, "routes") || runs(st, "monitoring") || st.Link.State != "standby" {
			t.Errorf("standby %s: conditions %+v, link %q (%v); want no route sync, no monitoring and no link", a.name, st.Conditions, st.Link.State, err)
		}
	}
	if n := len(c.clusters()); n != 1 {
		t.Fatalf("the control plane knows %d clusters; want 1", n)
	}
	c.wireClean()
}

func TestAFrozenLeaderThatLostItsLeaseSendsNothingMoreOnItsLinkWhenItWakes(t *testing.T) {
	c := newCluster(t, 2)
	lead, _ := upWithOneCluster(t, c)
	before := c.only()
	links := c.relay.links()
	link := links[len(links)-1] // the leader's gateway link
	if err := lead.proc.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	var next *agent
	testbin.Eventually(t, 60*time.Second, "the standby takes over while the leader is frozen", func() bool {
		for _, a := range c.agents {
			if a == lead {
				continue
			}
			if st, err := a.ha(); err == nil && st.Role == apitype.HALeader {
				next = a
			}
		}
		cl := c.only()
		return next != nil && cl.Connected && cl.Connections > before.Connections
	}, c.describe)
	sent := link.fromAgent.Load()
	if err := lead.proc.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	// It notices it lost the lease and starts over as a standby, in place.
	testbin.Eventually(t, 60*time.Second, "the old leader is a standby of the new one", func() bool {
		st, err := lead.ha()
		return err == nil && st.Role == apitype.HAStandby && st.Leader == next.name
	}, c.describe)
	if got := link.fromAgent.Load(); got != sent {
		t.Fatalf("the old leader sent %d more bytes on its old link after it woke; want none", got-sent)
	}
	if !link.agentGone.Load() {
		t.Fatal("the old leader still holds its old link")
	}
	if cl := c.only(); cl.Registrations != 1 || !cl.Connected {
		t.Fatalf("control plane after the wake-up: %+v", cl)
	}
	c.wireClean()
}

func TestAGracefulStopAndAStepDownHandOverInAboutASecond(t *testing.T) {
	c := newCluster(t, 2)
	lead, id := upWithOneCluster(t, c)
	for round, how := range []string{"systemctl stop (SIGTERM)", "pipeopsctl ha step-down"} {
		before := c.only()
		start := time.Now()
		switch round {
		case 0:
			lead.stop()
		case 1:
			if out, err := lead.ctl("ha", "step-down"); err != nil {
				t.Fatalf("pipeopsctl ha step-down: %v\n%s", err, out)
			}
		}
		var next *agent
		testbin.Eventually(t, 10*time.Second, "a standby takes over after "+how, func() bool {
			next = c.leader()
			cl := c.only()
			return next != nil && next != lead && cl.Connected && cl.Connections > before.Connections
		}, c.describe)
		took := time.Since(start)
		testbin.Eventually(t, 10*time.Second, "proxied calls work again", func() bool { return c.proxied(id) == nil })
		t.Logf("%s: %s → %s, on the gateway again after %s, proxied calls after %s (target ≤ 2 s)", how, lead.name, next.name,
			took.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
		if cl := c.only(); cl.Registrations != 1 || cl.LastCloseCode != 1000 {
			t.Fatalf("%s: control plane shows %+v; want one registration and a 1000 close of the old link", how, cl)
		}
		if round == 0 {
			lead.start() // back as a standby for the step-down round
			testbin.Eventually(t, 20*time.Second, lead.name+" is back as a standby", func() bool {
				st, err := lead.ha()
				return err == nil && st.Role == apitype.HAStandby
			})
		} else {
			// A step-down restarts in place: same process, now a standby.
			testbin.Eventually(t, 20*time.Second, lead.name+" is a standby after stepping down", func() bool {
				st, err := lead.ha()
				return err == nil && st.Role == apitype.HAStandby && st.Leader == next.name
			}, c.describe)
		}
		lead = next
	}
	c.wireClean()
}

func TestWithTheAPIServerDownTheLeaderKeepsTheControlPlaneInSightWithoutActingAndNoStandbyConnects(t *testing.T) {
	// A private API-server-only cluster: the test stops its API server,
	// and without a token controller every agent mints TokenRequest
	// tokens, so a failover resumes only by adopting the shared token.
	p := kubetest.PrivateCluster(t, false)
	c := newClusterOn(t, p.Env, 2)
	lead, id := upWithOneCluster(t, c)
	testbin.Eventually(t, 20*time.Second, "proxied calls work", func() bool { return c.proxied(id) == nil })
	before := c.only()

	p.StopAPIServer(t)
	testbin.Eventually(t, 30*time.Second, "the leader holds its link through the outage", func() bool {
		st, err := lead.ha()
		return err == nil && st.Role == apitype.HAHolding
	}, c.describe)
	hb := c.only().Heartbeats
	testbin.Eventually(t, 20*time.Second, "the control plane keeps hearing heartbeats", func() bool {
		cl := c.only()
		return cl.Connected && cl.Heartbeats >= hb+3
	}, c.describe)
	code, body := c.proxiedBody(id)
	if code == 200 || !strings.Contains(body, "API server unreachable") {
		t.Fatalf("a proxied call during the outage = %d %q; want a clear \"API server unreachable\" error", code, body)
	}
	if cl := c.only(); cl.Connections != before.Connections || cl.Registrations != 1 {
		t.Fatalf("during the outage the control plane saw %d connections (had %d) and %d registrations; want no new connection",
			cl.Connections, before.Connections, cl.Registrations)
	}
	for _, a := range c.agents {
		if a == lead {
			continue
		}
		if st, err := a.status(); err != nil || st.Link.State != "standby" {
			t.Fatalf("standby %s during the outage: link %q (%v); want standby", a.name, st.Link.State, err)
		}
	}

	p.StartAPIServer(t)
	testbin.Eventually(t, 60*time.Second, "a leader is connected again and proxied calls work", func() bool {
		return c.leader() != nil && c.only().Connected && c.proxied(id) == nil
	}, c.describe)
	if cl := c.only(); cl.Registrations != 1 || cl.ID != id || len(c.clusters()) != 1 {
		t.Fatalf("after the outage the control plane shows %+v; want the same cluster, still one registration", c.clusters())
	}
	c.wireClean()
}
