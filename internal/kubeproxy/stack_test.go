package kubeproxy_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/rest"

	"github.com/pipeops/pipeops-vm-agent/internal/config"
	"github.com/pipeops/pipeops-vm-agent/internal/controlplane"
	"github.com/pipeops/pipeops-vm-agent/internal/devplane"
	"github.com/pipeops/pipeops-vm-agent/internal/health"
	"github.com/pipeops/pipeops-vm-agent/internal/kubeproxy"
	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
	"github.com/pipeops/pipeops-vm-agent/internal/state"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

func TestMain(m *testing.M) { kubetest.Main(m) }

const stackToken = "proxy-test-token"

// stack is the real path kubectl takes: the reference control plane
// (devplane, with its front door) ⇄ WebSocket ⇄ the agent's control-plane
// client ⇄ kubeproxy ⇄ a real kube-apiserver. Everything runs in-process.
type stack struct {
	plane     *devplane.Server
	hs        *http.Server
	base      string // http://127.0.0.1:port
	clusterID string
	proxy     *kubeproxy.Proxy
	stopAgent context.CancelFunc
	agentDone chan struct{}
	logs      *bytes.Buffer
}

type stubCluster struct{}

func (stubCluster) Version(context.Context) (string, error) { return "v1.36.3", nil }
func (stubCluster) Credentials(context.Context) (string, string, error) {
	return "sa-token-for-registration", "Q0EK", nil
}
func (stubCluster) Telemetry(context.Context) (controlplane.Telemetry, error) {
	return controlplane.Telemetry{}, nil
}

// startStack runs devplane and the agent pieces; identity is the rest.Config
// the proxy uses (the test's stand-in for the ServiceAccount config).
func startStack(t testing.TB, identity *rest.Config, mod func(*kubeproxy.Options)) *stack {
	t.Helper()
	s := newPlane(t)
	cfg := config.Default()
	cfg.PipeOps.APIURL = s.base
	cfg.PipeOps.Token = stackToken
	st, err := state.Open("", nil)
	if err != nil {
		t.Fatal(err)
	}
	o := kubeproxy.Options{RESTConfig: func() *rest.Config { return identity }, Registerer: prometheus.NewRegistry()}
	if mod != nil {
		mod(&o)
	}
	if s.proxy, err = kubeproxy.New(o); err != nil {
		t.Fatal(err)
	}
	agentID := fmt.Sprintf("proxy-test-%d", time.Now().UnixNano())
	cp, err := controlplane.New(controlplane.Options{Config: cfg, AgentID: agentID, State: st, Health: health.New(nil),
		Cluster: stubCluster{}, Log: slog.New(slog.DiscardHandler), K3sTokenPath: "/nonexistent"})
	if err != nil {
		t.Fatal(err)
	}
	cp.Register(s.proxy)
	ctx, cancel := context.WithCancel(context.Background())
	s.stopAgent, s.agentDone = cancel, make(chan struct{})
	go func() { defer close(s.agentDone); _ = cp.Run(ctx) }()
	s.waitGateway(t, agentID)
	return s
}

// newPlane starts only the reference control plane.
func newPlane(t testing.TB) *stack {
	t.Helper()
	s := &stack{plane: devplane.New(devplane.Config{Tokens: []string{stackToken}})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.base = "http://" + ln.Addr().String()
	s.hs = &http.Server{Handler: s.plane.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = s.hs.Serve(ln) }()
	t.Cleanup(func() {
		s.stop()
		s.plane.CloseAll()
		_ = s.hs.Close()
	})
	return s
}

// waitGateway waits until the agent agentID is connected to the gateway.
func (s *stack) waitGateway(t testing.TB, agentID string) {
	t.Helper()
	s.clusterID = devplane.ClusterIDFor(agentID)
	eventually(t, 20*time.Second, "the agent is connected to the gateway", func() bool {
		c, ok := s.plane.Cluster(s.clusterID)
		return ok && c.Connected && c.Mode == devplane.KindGateway
	})
}

func (s *stack) stop() {
	if s.stopAgent != nil {
		s.stopAgent()
		<-s.agentDone
		s.stopAgent = nil
	}
}

// server is kubectl's --server for this cluster.
func (s *stack) server() string { return devplane.FrontDoorURL(s.base, s.clusterID) }

// kubeconfig writes the front door kubeconfig with an optional token.
func (s *stack) kubeconfig(t testing.TB, token string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "frontdoor.kubeconfig")
	if err := os.WriteFile(p, devplane.FrontDoorKubeconfig(s.base, s.clusterID, token), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// kubectl runs the real kubectl through the front door.
func kubectl(t testing.TB, env *kubetest.Env, kubeconfig, stdin string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(env.Bin, "kubectl"), append([]string{"--kubeconfig", kubeconfig}, args...)...)
	cmd.Env = append(os.Environ(), "KUBECACHEDIR="+t.TempDir())
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("kubectl %s: %w\n%s", strings.Join(args, " "), err, errb.String())
	}
	return out.String(), nil
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	testbin.Eventually(t, within, what, cond)
}

// adminToken is the bearer token of the kubetest admin identity.
func adminToken(t testing.TB, env *kubetest.Env) string {
	t.Helper()
	if env.Config.BearerToken == "" {
		t.Fatal("the test cluster's admin kubeconfig has no bearer token")
	}
	return env.Config.BearerToken
}
