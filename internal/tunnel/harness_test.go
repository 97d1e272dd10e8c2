package tunnel

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pipeops/pipeops-vm-agent/internal/config"
	"github.com/pipeops/pipeops-vm-agent/internal/controlplane"
	"github.com/pipeops/pipeops-vm-agent/internal/devplane"
	"github.com/pipeops/pipeops-vm-agent/internal/health"
	"github.com/pipeops/pipeops-vm-agent/internal/state"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

const testToken = "tunnel-test-token"

// rig is the real thing in one process: the reference control plane
// (devplane, hashicorp/yamux server), the agent's control-plane client and
// the tunnel Manager registered on it.
type rig struct {
	plane *devplane.Server
	hs    *http.Server
	mgr   *Manager
	reg   *prometheus.Registry
	logs  *testbin.Output
	// stopTunnel cancels only the Manager's Run; mgrDone closes when it returned.
	stopTunnel context.CancelFunc
	mgrDone    chan struct{}
}

// startRig starts a devplane and an agent; cfg.Forwards etc. come from tc.
func startRig(t *testing.T, tc Config, dialer ServiceDialer, opts devplane.TunnelOptions) *rig {
	t.Helper()
	r := &rig{plane: devplane.New(devplane.Config{Tokens: []string{testToken}}), reg: prometheus.NewRegistry(), logs: &testbin.Output{}}
	r.plane.SetTunnelOptions(opts)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.hs = &http.Server{Handler: r.plane.Handler()}
	go r.hs.Serve(ln)

	log := slog.New(slog.NewTextHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	r.mgr = New(tc, dialer, r.reg, log)
	cfg := config.Default()
	cfg.PipeOps.APIURL = "http://" + ln.Addr().String()
	cfg.PipeOps.Token = testToken
	cfg.PipeOps.TLS.Enabled = false
	cfg.Agent.HeartbeatInterval = config.D(time.Second)
	cfg.PipeOps.Reconnect.Interval = config.D(50 * time.Millisecond)
	cfg.PipeOps.Reconnect.MaxInterval = config.D(200 * time.Millisecond)
	st, _ := state.Open("", nil)
	h := health.New(nil)
	cp, err := controlplane.New(controlplane.Options{Config: cfg, AgentID: "tunnel-test-agent", State: st, Health: h,
		Cluster: testCluster{}, Log: log, K3sTokenPath: "/nonexistent"})
	if err != nil {
		t.Fatal(err)
	}
	cp.Register(r.mgr)
	ctx, cancel := context.WithCancel(context.Background())
	mctx, mcancel := context.WithCancel(ctx)
	r.stopTunnel, r.mgrDone = mcancel, make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = cp.Run(ctx) }()
	go func() { defer wg.Done(); defer close(r.mgrDone); _ = r.mgr.Run(mctx) }()
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		r.hs.Close()
		r.plane.DropAll()
		if t.Failed() {
			t.Logf("agent log:\n%s", r.logs.String())
		}
	})
	wctx, wcancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer wcancel()
	if err := r.plane.WaitTunnel(wctx, ""); err != nil {
		t.Fatalf("tunnel never came up: %v", err)
	}
	return r
}

// open opens a stream to target (fails the test on error).
func (r *rig) open(t *testing.T, target devplane.TunnelTarget) net.Conn {
	t.Helper()
	c, err := r.tryOpen(t, target)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// tryOpen opens a stream and writes its header; a stream the agent resets
// at once (over the cap) may fail here already, before any read.
func (r *rig) tryOpen(t *testing.T, target devplane.TunnelTarget) (net.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := r.plane.OpenTunnelStream(ctx, "", target)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Close() })
	return c, nil
}

// testCluster is the narrow stand-in for the Kubernetes side of the link.
type testCluster struct{}

func (testCluster) Version(context.Context) (string, error) { return "v1.36.3", nil }
func (testCluster) Credentials(context.Context) (string, string, error) {
	return "token", "Q0EK", nil
}
func (testCluster) Telemetry(context.Context) (controlplane.Telemetry, error) {
	return controlplane.Telemetry{K8sVersion: "v1.36.3"}, nil
}

// echoServer echoes every TCP connection until EOF, then half-closes.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
				_ = c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	return ln.Addr().String()
}

// counter reads a counter or gauge value from reg; 0 when it has no such series.
func counter(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	var labels []string
	if label != "" {
		labels = []string{label, value}
	}
	return max(testbin.Metric(t, reg, name, labels...), 0)
}
