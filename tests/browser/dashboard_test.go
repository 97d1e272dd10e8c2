package browser

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
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
			devplane.Kill()
			start := time.Now()
			browser.WaitText(t, "link-state", 15*time.Second, is("reconnecting"))
			t.Logf("%s: link drop shown after %v", tc.transport, time.Since(start).Round(time.Millisecond))
			if v := browser.Eval(t, `return window.__pipeopsMarker || 0;`); v != float64(42) {
				t.Fatalf("the page reloaded (marker %v); it must update in place", v)
			}
			browser.WaitText(t, "link-history", 5*time.Second, func(s string) bool { return strings.Contains(s, "reconnecting") })
			browser.WaitText(t, "link-error", 5*time.Second, func(s string) bool { return s != "—" })
			browser.Screenshot(t, filepath.Join(artifacts(t), "dashboard-"+tc.transport+"-reconnecting.png"))
			agent.Kill()
		})
	}
}

func is(want string) func(string) bool { return func(s string) bool { return s == want } }

// waitHTTP polls url until it answers (any status) or the process exits.
func waitHTTP(t *testing.T, p *testbin.Proc, url string) {
	t.Helper()
	testbin.Eventually(t, 20*time.Second, p.Name+" answering at "+url, func() bool {
		if r, err := http.Get(url); err == nil {
			r.Body.Close()
			return true
		}
		select {
		case <-p.Done():
			t.Fatalf("%s exited early: %v\n%s", p.Name, p.Err(), p.Out.String())
		default:
		}
		return false
	}, p.Out.String)
}

// startDevplane runs the reference control plane binary on a free port.
func startDevplane(t *testing.T, token string) (*testbin.Proc, string) {
	t.Helper()
	bin := testbin.Build(t, "pipeops-devplane")
	addr := fmt.Sprintf("127.0.0.1:%d", testbin.FreePort(t))
	p := testbin.Start(t, bin, nil, "--listen", addr, "--token", token)
	waitHTTP(t, p, "http://"+addr+"/admin/clusters")
	return p, "http://" + addr
}

// startAgent runs pipeops-agent against apiURL and the given kubeconfig,
// with extra environment (the transport switches), and waits for its HTTP port.
func startAgent(t *testing.T, apiURL, token, kubeconfig string, env ...string) (*testbin.Proc, string) {
	t.Helper()
	bin := testbin.Build(t, "pipeops-agent")
	dir := testbin.ShortTempDir(t)
	port := testbin.FreePort(t)
	cfg := filepath.Join(dir, "agent.yaml")
	yaml := fmt.Sprintf("version: 1\nagent:\n  name: browser-e2e\n  port: %d\n  state_dir: %s\n  socket: %s\n"+
		"pipeops:\n  api_url: %s\nkubernetes:\n  kubeconfig: %s\n",
		port, filepath.Join(dir, "state"), filepath.Join(dir, "agent.sock"), apiURL, kubeconfig)
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	p := testbin.Start(t, bin, append([]string{"PIPEOPS_TOKEN=" + token, "PIPEOPS_LOG_FORMAT=json", "NOTIFY_SOCKET="}, env...), "run", "--config", cfg)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	waitHTTP(t, p, base+"/health")
	return p, base
}
