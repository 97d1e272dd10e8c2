package controlplane

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/config"
	"github.com/pipeops/pipeops-vm-agent/internal/devplane"
	"github.com/pipeops/pipeops-vm-agent/internal/health"
	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
	"github.com/pipeops/pipeops-vm-agent/internal/state"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

func heartbeating(p *plane, mode string, minBeats int) func() bool {
	return func() bool {
		c, ok := onlyCluster(p)
		return ok && c.Connected && c.Mode == mode && c.Heartbeats >= minBeats
	}
}

func TestAgentRegistersSwitchesToTheGatewayAndHeartbeats(t *testing.T) {
	p := startPlane(t)
	a := newAgent(t, testConfig(p.url()), nil, &fakeCluster{version: "v1.36.3", token: "sa-token"}, nil)
	a.start(t)
	testbin.Eventually(t, 5*time.Second, "a heartbeat on the gateway", heartbeating(p, devplane.KindGateway, 1))

	c, _ := onlyCluster(p)
	if c.Registrations != 1 || c.ID != devplane.ClusterIDFor("agent-test-1") || c.K8sVersion != "v1.36.3" {
		t.Fatalf("cluster = %+v; want one registration with the real version", c)
	}
	for _, k := range []string{"cluster_uuid", "supports_streaming", "supports_binary", "supports_websocket", "supports_yamux", "supports_response_streaming", "agent_version"} {
		if c.GatewayQuery[k] == "" {
			t.Errorf("gateway query lacks %s: %v", k, c.GatewayQuery)
		}
	}
	hb := c.Heartbeat()
	if hb.ClusterID != c.ID || hb.Status != protocol.StatusHealthy || hb.TunnelStatus != "connected" ||
		hb.Metadata.K8sPods != 7 || hb.Metadata.CPUUsage != "12.5%" || hb.WorkerJoin != nil {
		t.Fatalf("heartbeat = %+v", hb)
	}
	st := a.st.Get()
	if st.ClusterID != c.ID || st.GatewayWSURL == "" || st.ClusterToken != "sa-token" || st.CredentialsFingerprint == "" || st.RegisteredAt.IsZero() {
		t.Fatalf("state = %+v", st)
	}
	testbin.Eventually(t, 2*time.Second, "ready", func() bool { ok, _ := a.health.Ready(); return ok })
	if s, reg := a.c.Link(); s != apitype.LinkConnected || !reg {
		t.Fatalf("Link() = %s, %v", s, reg)
	}
	if contains(a.logs.String(), "sa-token") || contains(a.logs.String(), testToken) {
		t.Fatal("a token reached the log")
	}
}

func TestRegisterCarriesEverySpecField(t *testing.T) {
	p := startPlane(t)
	cfg := testConfig(p.url())
	cfg.Agent.Labels = map[string]string{"team": "infra"}
	cfg.Agent.CloudProvider = "on-premises"
	a := newAgent(t, cfg, nil, &fakeCluster{version: "v1.36.3", token: "sa-token"}, nil)
	a.start(t)
	testbin.Eventually(t, 5*time.Second, "registration", func() bool { c, ok := onlyCluster(p); return ok && c.Registrations == 1 })
	c, _ := onlyCluster(p)
	var reg map[string]any
	if err := jsonUnmarshal(c.LastRegister, &reg); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"agent_id", "name", "k8s_version", "hostname", "agent_version", "server_ip", "region", "cloud_provider",
		"tunnel_port_config", "labels", "server_specs", "features", "metadata", "k8s_service_token"} {
		if reg[k] == nil || reg[k] == "" {
			t.Errorf("register payload lacks %s", k)
		}
	}
	if reg["server_ip"] != "127.0.0.1" || reg["cloud_provider"] != "bare-metal" {
		t.Errorf("server_ip=%v cloud_provider=%v; want the outbound interface toward the api host and bare-metal", reg["server_ip"], reg["cloud_provider"])
	}
	md := reg["metadata"].(map[string]any)
	if md["agent_mode"] != "vm-agent" || md["registration_mode"] != "fresh" {
		t.Errorf("metadata = %v", md)
	}
	labels := reg["labels"].(map[string]any)
	if labels["team"] != "infra" || labels["hostname"] == nil || labels["agent.pipeops.io/version"] == nil {
		t.Errorf("labels = %v", labels)
	}
}

func TestRestartResumesOnTheGatewayWithoutRegistering(t *testing.T) {
	p := startPlane(t)
	st, err := state.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	cl := &fakeCluster{version: "v1.36.3", token: "sa-token"}
	a := newAgent(t, testConfig(p.url()), st, cl, nil)
	a.start(t)
	testbin.Eventually(t, 5*time.Second, "first heartbeat", heartbeating(p, devplane.KindGateway, 1))
	a.stop()
	testbin.Eventually(t, 2*time.Second, "session closed with 1000", func() bool {
		c, _ := onlyCluster(p)
		return !c.Connected && c.LastCloseCode == 1000
	})
	before, _ := onlyCluster(p)

	b := newAgent(t, testConfig(p.url()), st, cl, nil)
	b.start(t)
	testbin.Eventually(t, 5*time.Second, "resumed heartbeat", heartbeating(p, devplane.KindGateway, before.Heartbeats+1))
	after, _ := onlyCluster(p)
	if after.Registrations != 1 || after.ID != before.ID {
		t.Fatalf("after restart: %d registrations, id %s; want 1 and %s", after.Registrations, after.ID, before.ID)
	}

	// Changed credentials re-register, with cluster_id and mode resume (§8.6).
	b.stop()
	cl.set(func(f *fakeCluster) { f.token = "rotated" })
	c := newAgent(t, testConfig(p.url()), st, cl, nil)
	c.start(t)
	testbin.Eventually(t, 5*time.Second, "re-registration", func() bool { x, _ := onlyCluster(p); return x.Registrations == 2 && x.Connected })
	x, _ := onlyCluster(p)
	var reg map[string]any
	_ = jsonUnmarshal(x.LastRegister, &reg)
	if reg["cluster_id"] != before.ID || reg["metadata"].(map[string]any)["registration_mode"] != "resume" {
		t.Fatalf("re-register payload = %v", reg)
	}
}

func TestGatewayRejectingTheTokenLeadsToRegistrationThroughTheController(t *testing.T) {
	p := startPlane(t)
	a := newAgent(t, testConfig(p.url()), nil, &fakeCluster{version: "v1.36.3"}, nil)
	a.start(t)
	testbin.Eventually(t, 5*time.Second, "first heartbeat", heartbeating(p, devplane.KindGateway, 1))
	p.srv.SetFaults(devplane.Faults{GatewayStatus: 401, Times: 1})
	p.srv.DropAll()
	testbin.Eventually(t, 5*time.Second, "second registration and a working gateway session", func() bool {
		c, _ := onlyCluster(p)
		return c.Registrations == 2 && c.Connected && c.Mode == devplane.KindGateway
	})
	c, _ := onlyCluster(p)
	var reg map[string]any
	_ = jsonUnmarshal(c.LastRegister, &reg)
	if reg["cluster_id"] != c.ID || reg["metadata"].(map[string]any)["registration_mode"] != "resume" {
		t.Fatalf("re-register after gateway 401 = %v; want cluster_id and mode resume", reg)
	}
	beats := c.Heartbeats
	testbin.Eventually(t, 5*time.Second, "heartbeats continue", heartbeating(p, devplane.KindGateway, beats+1))
}

func TestClusterNotFoundMakesTheAgentRegisterAfresh(t *testing.T) {
	p := startPlane(t)
	a := newAgent(t, testConfig(p.url()), nil, &fakeCluster{version: "v1.36.3"}, nil)
	a.start(t)
	testbin.Eventually(t, 5*time.Second, "first heartbeat", heartbeating(p, devplane.KindGateway, 1))
	id := a.c.ClusterID()
	if err := p.srv.SendError(context.Background(), id, "Cluster Not Found"); err != nil {
		t.Fatal(err)
	}
	testbin.Eventually(t, 5*time.Second, "fresh registration", func() bool {
		c, _ := onlyCluster(p)
		return c.Registrations == 2 && c.Connected && c.Mode == devplane.KindGateway
	})
	c, _ := onlyCluster(p)
	var reg map[string]any
	_ = jsonUnmarshal(c.LastRegister, &reg)
	if _, has := reg["cluster_id"]; has || reg["metadata"].(map[string]any)["registration_mode"] != "fresh" {
		t.Fatalf("register after cluster not found = %v; want fresh without cluster_id", reg)
	}
}

func TestForgottenClusterOnTheGatewayRegistersAgain(t *testing.T) {
	p := startPlane(t)
	a := newAgent(t, testConfig(p.url()), nil, &fakeCluster{version: "v1.36.3"}, nil)
	a.start(t)
	testbin.Eventually(t, 5*time.Second, "first heartbeat", heartbeating(p, devplane.KindGateway, 1))
	p.srv.Forget(a.c.ClusterID())
	p.srv.DropAll()
	testbin.Eventually(t, 5*time.Second, "registered again with the same id", heartbeating(p, devplane.KindGateway, 1))
	if c, _ := onlyCluster(p); c.ID != a.c.ClusterID() {
		t.Fatalf("cluster id changed: %s vs %s", c.ID, a.c.ClusterID())
	}
	// One retry for the drop, one immediate switch to the controller: the
	// "cluster not found" is honoured even though the gateway closed at once.
	if n := metricValue(t, a.reg, "pipeops_agent_controlplane_reconnects_total"); n != 2 {
		t.Fatalf("reconnects = %v; want 2", n)
	}
}

func TestControllerRejectingTheTokenKeepsRetryingAndNotReady(t *testing.T) {
	p := startPlane(t)
	p.srv.SetFaults(devplane.Faults{ControllerStatus: 403})
	a := newAgent(t, testConfig(p.url()), nil, &fakeCluster{version: "v1.36.3"}, nil)
	a.start(t)
	testbin.Eventually(t, 5*time.Second, "two rejected attempts", func() bool {
		return metricValue(t, a.reg, "pipeops_agent_controlplane_reconnects_total") >= 2
	})
	if ok, reasons := a.health.Ready(); ok || !contains(reasons[0], "install token") {
		t.Fatalf("ready=%v reasons=%v; want not ready naming the token", ok, reasons)
	}
	p.srv.SetFaults(devplane.Faults{})
	testbin.Eventually(t, 5*time.Second, "registered once the token is accepted", heartbeating(p, devplane.KindGateway, 1))
}

func TestRegistrationWaitsForTheKubernetesVersion(t *testing.T) {
	p := startPlane(t)
	cl := &fakeCluster{verErr: errBoom}
	a := newAgent(t, testConfig(p.url()), nil, cl, nil)
	a.start(t)
	testbin.Eventually(t, 5*time.Second, "a not-ready reason naming the Kubernetes API", func() bool {
		for _, c := range a.health.Snapshot() {
			if c.Name == health.ControlPlane && contains(c.Reason, "Kubernetes API version") {
				return true
			}
		}
		return false
	})
	if len(p.srv.Clusters()) != 0 {
		t.Fatal("registered without a Kubernetes version")
	}
	cl.set(func(f *fakeCluster) { f.verErr, f.version = nil, "v1.36.3" })
	testbin.Eventually(t, 5*time.Second, "registration once the API answers", heartbeating(p, devplane.KindGateway, 1))
}

func TestControllerWithoutGatewayURLKeepsTheControllerSession(t *testing.T) {
	p := startPlane(t)
	p.srv.SetFaults(devplane.Faults{NoGatewayURL: true})
	a := newAgent(t, testConfig(p.url()), nil, &fakeCluster{version: "v1.36.3"}, nil)
	a.start(t)
	testbin.Eventually(t, 5*time.Second, "heartbeats on the controller", heartbeating(p, devplane.KindController, 2))
}

func TestReconnectCallsHooksWithANewGenerationAndHeartbeatsAtOnce(t *testing.T) {
	p := startPlane(t)
	a := newAgent(t, testConfig(p.url()), nil, &fakeCluster{version: "v1.36.3"}, nil)
	var mu sync.Mutex
	var gens []uint64
	a.c.OnConnect(func(ctx context.Context, c protocol.Conn) {
		mu.Lock()
		gens = append(gens, c.Generation())
		mu.Unlock()
		<-ctx.Done() // in-flight work of a generation ends with it
	})
	a.c.AddHeartbeatContributor(func(_ context.Context, hb *protocol.Heartbeat) {
		hb.Metadata.GatewayRoutes = 3
		panic("contributor bug")
	})
	a.start(t)
	testbin.Eventually(t, 5*time.Second, "first hook", func() bool { mu.Lock(); defer mu.Unlock(); return len(gens) == 1 })
	p.srv.DropAll()
	testbin.Eventually(t, 5*time.Second, "second hook", func() bool { mu.Lock(); defer mu.Unlock(); return len(gens) == 2 })
	mu.Lock()
	if gens[1] <= gens[0] {
		t.Fatalf("generations %v do not grow", gens)
	}
	mu.Unlock()
	c, _ := onlyCluster(p)
	if c.Heartbeat().Metadata.GatewayRoutes != 3 {
		t.Fatalf("contributor's value missing: %+v", c.Heartbeat().Metadata)
	}
	var st apitype.StatusResponse
	a.c.FillStatus(context.Background(), &st)
	if st.Link.Reconnects < 1 || st.Link.Generation != gens[1] || st.ClusterID == "" {
		t.Fatalf("link status = %+v", st.Link)
	}
}

func TestWorkerJoinIsSentForK3sServersAndNeverLogged(t *testing.T) {
	p := startPlane(t)
	tok := filepath.Join(t.TempDir(), "node-token")
	os.WriteFile(tok, []byte("K10secret::server:abc\n"), 0o600)
	a := newAgent(t, testConfig(p.url()), nil, &fakeCluster{version: "v1.36.3"}, func(o *Options) { o.K3sTokenPath = tok })
	a.start(t)
	testbin.Eventually(t, 5*time.Second, "first heartbeat", heartbeating(p, devplane.KindGateway, 1))
	wj := func() *protocol.WorkerJoin { c, _ := onlyCluster(p); return c.Heartbeat().WorkerJoin }()
	if wj == nil || wj.Provider != "k3s" || wj.Env["K3S_TOKEN"] != "K10secret::server:abc" || wj.ServerURL != "https://127.0.0.1:6443" ||
		len(wj.Commands) != 2 || !contains(wj.Commands[1], "K3S_TOKEN=K10secret::server:abc sh -") {
		t.Fatalf("worker_join = %+v", wj)
	}
	if contains(a.logs.String(), "K10secret") {
		t.Fatal("the k3s token reached the log")
	}
}

func TestRotatedCredentialsAreRegisteredAtOnce(t *testing.T) {
	p := startPlane(t)
	cl := &fakeCluster{version: "v1.36.3", token: "t1"}
	a := newAgent(t, testConfig(p.url()), nil, cl, nil)
	a.start(t)
	testbin.Eventually(t, 5*time.Second, "first heartbeat", heartbeating(p, devplane.KindGateway, 1))
	cl.rotate("t2")
	testbin.Eventually(t, 5*time.Second, "second registration carrying the new token", func() bool {
		c, _ := onlyCluster(p)
		return c.Registrations == 2 && c.Connected
	})
	// The control plane counts the registration when it reads it; the agent
	// persists the token when register_success arrives, a moment later.
	testbin.Eventually(t, 5*time.Second, "the new token persisted", func() bool { return a.st.Get().ClusterToken == "t2" },
		func() string { return fmt.Sprintf("persisted token = %q", a.st.Get().ClusterToken) })
	if c, _ := onlyCluster(p); c.Registrations != 2 {
		t.Fatalf("registrations = %d; want 2 (one for the rotation)", c.Registrations)
	}
}

func TestRegisterInProgressExtendsTheWaitAndAnErrorFailsItAtOnce(t *testing.T) {
	p := startPlane(t)
	p.srv.SetFaults(devplane.Faults{RegisterDelayMS: 600})
	a := newAgent(t, testConfig(p.url()), nil, &fakeCluster{version: "v1.36.3"}, func(o *Options) { o.RegisterTimeout = 300 * time.Millisecond })
	a.start(t)
	testbin.Eventually(t, 5*time.Second, "registration after register_in_progress", heartbeating(p, devplane.KindGateway, 1))
	if n := metricValue(t, a.reg, "pipeops_agent_controlplane_reconnects_total"); n != 0 {
		t.Fatalf("reconnects = %v; want the first attempt to succeed", n)
	}
	a.stop()

	q := startPlane(t)
	q.srv.SetFaults(devplane.Faults{RegisterError: "workspace suspended"})
	b := newAgent(t, testConfig(q.url()), nil, &fakeCluster{version: "v1.36.3"}, func(o *Options) { o.RegisterTimeout = time.Minute })
	b.start(t)
	var st apitype.StatusResponse
	testbin.Eventually(t, 3*time.Second, "the refusal as the last error, long before the timeout", func() bool {
		b.c.FillStatus(context.Background(), &st)
		return contains(st.Link.LastError, "workspace suspended")
	})
}

func TestRetriesAfterARejectedTokenAreJitteredLikeEveryOtherRetry(t *testing.T) {
	// With the jitter source pinned at its two ends, the wait after a 403
	// spans ±25 % of the cap: agents whose token was revoked together do
	// not retry in lockstep.
	for _, r := range []float64{0, 0.999} {
		p := startPlane(t)
		p.srv.SetFaults(devplane.Faults{ControllerStatus: 403})
		cfg := testConfig(p.url())
		cfg.PipeOps.Reconnect.MaxInterval = config.D(2 * time.Second)
		a := newAgent(t, cfg, nil, &fakeCluster{version: "v1.36.3"}, func(o *Options) { o.Jitter = func() float64 { return r } })
		a.start(t)
		var link apitype.LinkStatus
		testbin.Eventually(t, 5*time.Second, "a rejected attempt", func() bool {
			var st apitype.StatusResponse
			a.c.FillStatus(context.Background(), &st)
			link = st.Link
			return !link.NextRetry.IsZero() && contains(link.LastError, "403")
		})
		want := time.Duration(float64(2*time.Second) * (0.75 + 0.5*r))
		if got := link.NextRetry.Sub(link.LastErrorAt); got != want {
			t.Errorf("jitter %v: retry after a 403 in %v; want %v", r, got, want)
		}
		a.stop()
	}
}

func TestACachedGatewayThatKeepsFailingLeadsToOneResumeRegistrationForTheCurrentGateway(t *testing.T) {
	for _, tc := range []struct{ name, gateway string }{
		{"connection refused", fmt.Sprintf("ws://127.0.0.1:%d/ws", testbin.FreePort(t))},
		{"HTTP 404", "/nope"}, // on the plane's own address
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := startPlane(t)
			st, _ := state.Open("", nil)
			cl := &fakeCluster{version: "v1.36.3", token: "sa-token"}
			fast := func(o *Options) { o.GatewayFallback = 500 * time.Millisecond }
			a := newAgent(t, testConfig(p.url()), st, cl, fast)
			a.start(t)
			testbin.Eventually(t, 5*time.Second, "first heartbeat", heartbeating(p, devplane.KindGateway, 1))
			a.stop()
			first, _ := onlyCluster(p)
			gw := tc.gateway
			if strings.HasPrefix(gw, "/") {
				gw = "ws://" + p.addr + gw
			}
			// The gateway moved: the cached URL fails, though not with 401/403.
			st.Update(func(s *state.State) error { s.GatewayWSURL = gw; return nil })

			b := newAgent(t, testConfig(p.url()), st, cl, fast)
			b.start(t)
			testbin.Eventually(t, 10*time.Second, "a resume registration and heartbeats on the current gateway", func() bool {
				c, _ := onlyCluster(p)
				return c.Registrations == 2 && c.Connected && c.Mode == devplane.KindGateway && c.Heartbeats > first.Heartbeats
			})
			c, _ := onlyCluster(p)
			var reg map[string]any
			_ = jsonUnmarshal(c.LastRegister, &reg)
			if reg["cluster_id"] != first.ID || reg["metadata"].(map[string]any)["registration_mode"] != "resume" {
				t.Fatalf("register payload = %v; want cluster_id %s and registration_mode resume", reg, first.ID)
			}
			if got := st.Get().GatewayWSURL; got == gw {
				t.Fatalf("the dead gateway %s is still cached", got)
			}
			if !contains(b.logs.String(), "cached gateway keeps failing") {
				t.Fatal("the log does not say why the agent asked the controller")
			}
		})
	}
}

func TestReconnectsLeaveNoCredentialsWaiterBehind(t *testing.T) {
	p := startPlane(t)
	cl := &fakeCluster{version: "v1.36.3", token: "sa-token"}
	a := newAgent(t, testConfig(p.url()), nil, cl, nil)
	a.start(t)
	testbin.Eventually(t, 5*time.Second, "first heartbeat", heartbeating(p, devplane.KindGateway, 1))
	for i := 0; i < 20; i++ {
		before, _ := onlyCluster(p)
		p.srv.DropAll()
		testbin.Eventually(t, 5*time.Second, "reconnected", heartbeating(p, devplane.KindGateway, before.Heartbeats+1))
	}
	if n := cl.outstanding(); n != 1 {
		t.Fatalf("after 20 reconnects the link holds %d CredentialsChanged waiters; want 1", n)
	}
}

func TestAConnectionsGoroutinesAreJoinedBeforeTheNextConnection(t *testing.T) {
	// A hook of the first gateway connection stays busy for a second
	// after its connection ended (longer than the 50-400 ms reconnect
	// backoff here). The next connection must start only after it
	// returned: every goroutine of a generation (reader, writer, pinger,
	// hooks, senders) is joined before the next one exists.
	p := startPlane(t)
	a := newAgent(t, testConfig(p.url()), nil, &fakeCluster{version: "v1.36.3"}, nil)
	var slowHookDone, early atomic.Bool
	slowGen := atomic.Uint64{}
	a.c.OnConnect(func(ctx context.Context, c protocol.Conn) {
		slowGen.CompareAndSwap(0, c.Generation())
		<-ctx.Done()
		if c.Generation() == slowGen.Load() {
			<-time.After(time.Second) // a slow hook, not a wait in the test
			slowHookDone.Store(true)
		}
	})
	var sessions atomic.Int32
	p.srv.OnGatewaySession(func(*devplane.Session) {
		if sessions.Add(1) > 1 && !slowHookDone.Load() {
			early.Store(true)
		}
	})
	a.start(t)
	testbin.Eventually(t, 5*time.Second, "heartbeating on the gateway", heartbeating(p, devplane.KindGateway, 1))
	first, _ := onlyCluster(p)
	p.srv.DropAll()
	testbin.Eventually(t, 10*time.Second, "reconnected", heartbeating(p, devplane.KindGateway, first.Heartbeats+1))
	if early.Load() {
		t.Fatal("a new connection started while a goroutine of the previous one still ran")
	}
}

func TestASilentBlackholeIsDetectedWithinTwoAndAHalfPingIntervalsAndHeals(t *testing.T) {
	p := startPlane(t)
	relay := newBlackholeRelay(t, p.addr)
	a := newAgent(t, testConfig("http://"+relay.Addr()), nil, &fakeCluster{version: "v1.36.3"}, func(o *Options) {
		o.PingInterval = 200 * time.Millisecond // silence after 500 ms; the read deadline stays 60 s
	})
	a.start(t)
	testbin.Eventually(t, 5*time.Second, "heartbeating on the gateway", heartbeating(p, devplane.KindGateway, 1))
	relay.Hole()
	testbin.Eventually(t, 5*time.Second, "the dead connection detected", func() bool {
		var st apitype.StatusResponse
		a.c.FillStatus(context.Background(), &st)
		return contains(st.Link.LastError, "silently dead")
	})
	before, _ := onlyCluster(p)
	relay.Heal()
	testbin.Eventually(t, 10*time.Second, "heartbeats again after the heal", heartbeating(p, devplane.KindGateway, before.Heartbeats+1))
}

func TestShutdownDrainsWhileTheConnectionCanStillCarryAnswers(t *testing.T) {
	// §8.7: in-flight work answers before the link closes with 1000. The
	// drainer here answers a request on the live connection at shutdown.
	p := startPlane(t)
	a := newAgent(t, testConfig(p.url()), nil, &fakeCluster{version: "v1.36.3"}, nil)
	var live atomic.Value
	a.c.OnConnect(func(_ context.Context, c protocol.Conn) { live.Store(c) })
	sent := make(chan error, 1)
	a.c.OnShutdown(func(ctx context.Context) {
		c, _ := live.Load().(protocol.Conn)
		if c == nil {
			sent <- errors.New("no connection")
			return
		}
		sent <- c.Send(ctx, protocol.TypeProxyResponse, "in-flight", protocol.ProxyResponse{Status: 200})
	})
	a.start(t)
	testbin.Eventually(t, 5*time.Second, "heartbeating on the gateway", heartbeating(p, devplane.KindGateway, 1))
	testbin.Eventually(t, 5*time.Second, "the connect hook ran", func() bool { return live.Load() != nil })
	a.stop()
	if err := <-sent; err != nil {
		t.Fatalf("the drainer could not answer on the connection: %v", err)
	}
	// The control plane reads the answer, then the close frame (1000).
	testbin.Eventually(t, 5*time.Second, "the answer, then a clean close", func() bool {
		c, _ := onlyCluster(p)
		return c.Other[protocol.TypeProxyResponse] == 1 && !c.Connected && c.LastCloseCode == 1000
	})
}
