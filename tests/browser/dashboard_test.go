package browser

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

func TestMain(m *testing.M) { kubetest.Main(m) }

// artifacts is where screenshots go: $PIPEOPS_TEST_ARTIFACTS (scripts/test.sh
// sets it) or tests/artifacts, which git ignores.
func artifacts(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("PIPEOPS_TEST_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join("..", "artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestDashboardShowsTheLinkDropLiveInARealBrowser loads the dashboard of a
// real agent connected to the real reference control plane and a real
// Kubernetes API, once per transport, reads "connected", kills the control
// plane and reads "reconnecting" on the same page, without a reload.
func TestDashboardShowsTheLinkDropLiveInARealBrowser(t *testing.T) {
	cases := []struct {
		name      string
		env       []string
		transport string
	}{
		{"over server-sent events", nil, "sse"},
		{"over the WebSocket when SSE is switched off", []string{"PIPEOPS_ENABLE_SSE=false"}, "ws"},
		{"by polling when both streams are switched off", []string{"PIPEOPS_ENABLE_SSE=false", "PIPEOPS_ENABLE_WEBSOCKET=false"}, "poll"},
	}
	browser := Start(t)
	kube := kubetest.Cluster(t)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			const token = "browser-e2e-token"
			devplane, apiURL := startDevplane(t, token)
			agent, base := startAgent(t, apiURL, token, kube.Kubeconfig, tc.env...)

			browser.Open(t, base+"/")
			if got := browser.Text(t, "transport"); got != tc.transport {
				t.Fatalf("transport = %q; want %q", got, tc.transport)
			}
			browser.WaitText(t, "link-state", 60*time.Second, is("connected"))
			browser.WaitText(t, "cluster-name", 5*time.Second, is("browser-e2e"))
			browser.WaitText(t, "feed-state", 5*time.Second, is("live"))
			browser.WaitText(t, "cluster-id", 5*time.Second, func(s string) bool { return s != "—" && s != "" })
			browser.WaitText(t, "heartbeat-age", 30*time.Second, func(s string) bool { return strings.Contains(s, "ago") })
			shot := filepath.Join(artifacts(t), "dashboard-"+tc.transport+"-connected.png")
			browser.Screenshot(t, shot)

			// Mark this page load: a reload would lose the marker.
			browser.Eval(t, `window.__pipeopsMarker = 42; return true;`)
			devplane.kill()
			start := time.Now()
			browser.WaitText(t, "link-state", 15*time.Second, is("reconnecting"))
			t.Logf("%s: link drop shown after %v", tc.transport, time.Since(start).Round(time.Millisecond))
			if v := browser.Eval(t, `return window.__pipeopsMarker || 0;`); v != float64(42) {
				t.Fatalf("the page reloaded (marker %v); it must update in place", v)
			}
			browser.WaitText(t, "link-history", 5*time.Second, func(s string) bool { return strings.Contains(s, "reconnecting") })
			browser.WaitText(t, "link-error", 5*time.Second, func(s string) bool { return s != "—" })
			browser.Screenshot(t, filepath.Join(artifacts(t), "dashboard-"+tc.transport+"-reconnecting.png"))
			agent.kill()
		})
	}
}

func is(want string) func(string) bool { return func(s string) bool { return s == want } }

// syncBuffer is a bytes.Buffer safe for a process's output and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// proc is a real binary started by a test.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan error
}

func startProc(t *testing.T, name string, cmd *exec.Cmd) *proc {
	t.Helper()
	p := &proc{name: name, cmd: cmd, out: &syncBuffer{}, done: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("%s output:\n%s", name, p.out.String())
		}
	})
	return p
}

// kill stops the process at once (SIGKILL: the control plane vanishes) and reaps it.
func (p *proc) kill() {
	select {
	case <-p.done:
		p.done <- nil // keep it readable for the next caller
		return
	default:
	}
	p.cmd.Process.Kill()
	err := <-p.done
	p.done <- err
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// waitHTTP polls url until it answers (any status) or the process exits.
func waitHTTP(t *testing.T, p *proc, url string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if r, err := http.Get(url); err == nil {
			r.Body.Close()
			return
		}
		select {
		case err := <-p.done:
			p.done <- err
			t.Fatalf("%s exited early: %v\n%s", p.name, err, p.out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not answer at %s\n%s", p.name, url, p.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startDevplane runs the reference control plane binary on a free port.
func startDevplane(t *testing.T, token string) (*proc, string) {
	t.Helper()
	bin := testbin.Build(t, "pipeops-devplane")
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	p := startProc(t, "pipeops-devplane", exec.Command(bin, "--listen", addr, "--token", token))
	waitHTTP(t, p, "http://"+addr+"/admin/clusters")
	return p, "http://" + addr
}

// startAgent runs pipeops-agent against apiURL and the given kubeconfig,
// with extra environment (the transport switches), and waits for its HTTP port.
func startAgent(t *testing.T, apiURL, token, kubeconfig string, env ...string) (*proc, string) {
	t.Helper()
	bin := testbin.Build(t, "pipeops-agent")
	dir := testbin.ShortTempDir(t)
	port := freePort(t)
	cfg := filepath.Join(dir, "agent.yaml")
	yaml := fmt.Sprintf("version: 1\nagent:\n  name: browser-e2e\n  port: %d\n  state_dir: %s\n  socket: %s\n"+
		"pipeops:\n  api_url: %s\nkubernetes:\n  kubeconfig: %s\n",
		port, filepath.Join(dir, "state"), filepath.Join(dir, "agent.sock"), apiURL, kubeconfig)
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "run", "--config", cfg)
	cmd.Env = append(os.Environ(), append([]string{"PIPEOPS_TOKEN=" + token, "PIPEOPS_LOG_FORMAT=json", "NOTIFY_SOCKET="}, env...)...)
	p := startProc(t, "pipeops-agent", cmd)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	waitHTTP(t, p, base+"/health")
	return p, base
}
