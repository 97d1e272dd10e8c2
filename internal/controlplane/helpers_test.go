package controlplane

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pipeops/pipeops-vm-agent/internal/config"
	"github.com/pipeops/pipeops-vm-agent/internal/devplane"
	"github.com/pipeops/pipeops-vm-agent/internal/health"
	"github.com/pipeops/pipeops-vm-agent/internal/state"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

const testToken = "test-install-token"

// fakeCluster is the narrow unit-test stand-in for the Kubernetes side.
type fakeCluster struct {
	mu      sync.Mutex
	version string
	verErr  error
	token   string
	changed chan struct{}
	waiters int
}

func (f *fakeCluster) CredentialsChanged() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.changed == nil {
		f.changed = make(chan struct{})
	}
	f.waiters++ // like kube.Manager, each call is one more waiter until the next change
	return f.changed
}

// outstanding is how many CredentialsChanged waiters the link holds.
func (f *fakeCluster) outstanding() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.waiters
}

// rotate replaces the token and signals the change.
func (f *fakeCluster) rotate(token string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.token = token
	if f.changed != nil {
		close(f.changed)
	}
	f.waiters = 0
	f.changed = make(chan struct{})
}

func (f *fakeCluster) Version(context.Context) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.version, f.verErr
}

func (f *fakeCluster) Credentials(context.Context) (string, string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.token, "Q0EK", nil
}

func (f *fakeCluster) Telemetry(context.Context) (Telemetry, error) {
	return Telemetry{K8sVersion: "v1.36.3", Nodes: 1, Pods: 7, CPUUsage: "12.5%", MemoryUsage: "40.0%"}, nil
}

func (f *fakeCluster) set(fn func(f *fakeCluster)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

// plane is an in-process devplane on a fixed loopback address that can be
// stopped and started again.
type plane struct {
	t    *testing.T
	srv  *devplane.Server
	addr string
	hs   *http.Server
}

func startPlane(t *testing.T) *plane {
	t.Helper()
	p := &plane{t: t, srv: devplane.New(devplane.Config{Tokens: []string{testToken}})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = ln.Addr().String()
	p.serve(ln)
	t.Cleanup(p.stop)
	return p
}

func (p *plane) serve(ln net.Listener) {
	p.hs = &http.Server{Handler: p.srv.Handler()}
	go p.hs.Serve(ln)
}

func (p *plane) url() string { return "http://" + p.addr }

// stop closes the listener and every session, like a crash.
func (p *plane) stop() {
	if p.hs != nil {
		p.hs.Close()
		p.srv.DropAll()
		p.hs = nil
	}
}

// restart listens again on the same address.
func (p *plane) restart() {
	p.t.Helper()
	var ln net.Listener
	var err error
	testbin.Eventually(p.t, 5*time.Second, "listening again on "+p.addr,
		func() bool { ln, err = net.Listen("tcp", p.addr); return err == nil },
		func() string { return err.Error() })
	p.serve(ln)
}

// agent is a Client under test with its dependencies.
type agent struct {
	c      *Client
	cfg    *config.Config
	st     *state.Store
	health *health.Tracker
	reg    *prometheus.Registry
	logs   *testbin.Output
	cancel context.CancelFunc
	done   chan struct{}
}

func testConfig(apiURL string) *config.Config {
	cfg := config.Default()
	cfg.PipeOps.APIURL = apiURL
	cfg.PipeOps.Token = testToken
	cfg.Agent.HeartbeatInterval = config.D(200 * time.Millisecond)
	cfg.PipeOps.Reconnect.Interval = config.D(50 * time.Millisecond)
	cfg.PipeOps.Reconnect.MaxInterval = config.D(400 * time.Millisecond)
	return cfg
}

// newAgent builds a client; st nil means a fresh memory store.
func newAgent(t *testing.T, cfg *config.Config, st *state.Store, cl Cluster, tweak func(*Options)) *agent {
	t.Helper()
	if st == nil {
		st, _ = state.Open("", nil)
	}
	a := &agent{cfg: cfg, st: st, health: health.New(nil), reg: prometheus.NewRegistry(), logs: &testbin.Output{}}
	a.health.Require(health.ControlPlane, "connecting")
	o := Options{Config: cfg, AgentID: "agent-test-1", State: st, Health: a.health, Metrics: a.reg, Cluster: cl,
		Log: slog.New(slog.NewTextHandler(a.logs, &slog.HandlerOptions{Level: slog.LevelDebug})), K3sTokenPath: "/nonexistent"}
	if tweak != nil {
		tweak(&o)
	}
	c, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	a.c = c
	return a
}

func (a *agent) start(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel, a.done = cancel, make(chan struct{})
	go func() { defer close(a.done); _ = a.c.Run(ctx) }()
	t.Cleanup(func() {
		a.stop()
		if t.Failed() {
			t.Logf("agent log:\n%s", a.logs.String())
		}
	})
}

func (a *agent) stop() {
	if a.cancel != nil {
		a.cancel()
		<-a.done
		a.cancel = nil
	}
}

// onlyCluster returns the devplane's single cluster.
func onlyCluster(p *plane) (devplane.ClusterInfo, bool) {
	cs := p.srv.Clusters()
	if len(cs) != 1 {
		return devplane.ClusterInfo{}, false
	}
	return cs[0], true
}

func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	return max(testbin.Metric(t, reg, name, labels...), 0) // absent reads as 0
}

var errBoom = errors.New("apiserver not reachable")

func contains(s, sub string) bool { return strings.Contains(s, sub) }

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

// newBlackholeRelay is a testbin.Blackhole in front of target, closed with the test.
func newBlackholeRelay(t *testing.T, target string) *testbin.Blackhole {
	t.Helper()
	r, err := testbin.NewBlackhole("127.0.0.1:0", target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}
