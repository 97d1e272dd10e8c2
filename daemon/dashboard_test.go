package daemon

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/pipeops/pipeops-vm-agent/internal/config"
	"github.com/pipeops/pipeops-vm-agent/internal/dashboard"
	"github.com/pipeops/pipeops-vm-agent/internal/logging"
	"github.com/pipeops/pipeops-vm-agent/internal/state"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

// TestDashboardNeverShowsSecrets runs the real daemon with a token, a
// service token and state secrets, logs a warning carrying the token, and
// reads every dashboard surface: none may contain a secret, and none may
// proxy to Kubernetes.
func TestDashboardNeverShowsSecrets(t *testing.T) {
	dir := testbin.ShortTempDir(t)
	secrets := []string{"tok-SECRET-pipeops-1", "svc-SECRET-kube-2", "cluster-SECRET-state-3", "grafana-SECRET-pw-4"}
	cfg := config.Default()
	cfg.Agent.Name = "secrets-test"
	cfg.Agent.Port = testbin.FreePort(t)
	cfg.Agent.StateDir = filepath.Join(dir, "state")
	cfg.Agent.Socket = filepath.Join(dir, "a.sock")
	cfg.PipeOps.APIURL = fmt.Sprintf("http://127.0.0.1:%d", testbin.FreePort(t)) // nothing listens
	cfg.PipeOps.Token = config.Secret(secrets[0])
	cfg.Kubernetes.ServiceToken = config.Secret(secrets[1])
	cfg.Kubernetes.Kubeconfig = filepath.Join(dir, "absent-kubeconfig")

	st, err := state.Open(cfg.Agent.StateDir, logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Update(func(s *state.State) error {
		s.ClusterToken = secrets[2]
		s.Secrets = map[string]string{"grafana_admin_password": secrets[3]}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	recent := dashboard.NewLogBuffer(0)
	log := logging.New(logging.Options{Format: logging.FormatJSON, Out: io.Discard, Sink: recent.Add})
	d, err := New(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	d.SetLogBuffer(recent)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	defer func() {
		cancel()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			t.Error("daemon did not stop")
		}
	}()
	base := fmt.Sprintf("http://127.0.0.1:%d", cfg.Agent.Port)
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(base + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	deadline := time.Now().Add(15 * time.Second)
	for code, _ := get("/health"); code != http.StatusOK; code, _ = get("/health") {
		if time.Now().After(deadline) {
			t.Fatal("status server did not come up")
		}
		time.Sleep(20 * time.Millisecond)
	}
	log.Warn("dashboard secret probe", "token", cfg.PipeOps.Token, "service_token", cfg.Kubernetes.ServiceToken)

	surfaces := map[string]string{}
	for _, p := range []string{"/", "/dashboard", "/api/status", "/v1/status"} {
		code, body := get(p)
		if code != http.StatusOK {
			t.Fatalf("GET %s = %d", p, code)
		}
		surfaces[p] = body
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		_, body := get("/api/logs")
		if strings.Contains(body, "dashboard secret probe") {
			surfaces["/api/logs"] = body
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the warning never reached /api/logs: %s", body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	surfaces["sse"] = readSSE(t, base+"/api/realtime/events", "dashboard secret probe")
	surfaces["ws"] = readWS(t, strings.Replace(base, "http", "ws", 1)+"/ws")

	for name, body := range surfaces {
		for _, s := range secrets {
			if strings.Contains(body, s) {
				t.Errorf("%s shows secret %q", name, s)
			}
		}
	}
	// Not a Kubernetes proxy: the reference agent's raw proxy paths do not exist.
	for _, p := range []string{"/api/v1/namespaces", "/apis/apps/v1/deployments", "/api/v1/namespaces/default/pods/x/exec"} {
		if code, _ := get(p); code != http.StatusNotFound {
			t.Errorf("GET %s = %d; want 404 (the dashboard must not proxy to Kubernetes)", p, code)
		}
	}
}

// readSSE reads the stream until it has seen want (the replayed log line)
// and at least one status event.
func readSSE(t *testing.T, url, want string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	var b strings.Builder
	deadline := time.Now().Add(10 * time.Second)
	for !(strings.Contains(b.String(), want) && strings.Contains(b.String(), "event: status")) {
		if time.Now().After(deadline) {
			t.Fatalf("SSE never carried %q and a status:\n%s", want, b.String())
		}
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString(line)
	}
	return b.String()
}

func readWS(t *testing.T, url string) string {
	t.Helper()
	c, _, err := websocket.DefaultDialer.Dial(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.WriteMessage(websocket.TextMessage, []byte(`{"type":"get_status","request_id":"1"}`)); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for !strings.Contains(b.String(), `"status_response"`) {
		_, msg, err := c.ReadMessage()
		if err != nil {
			t.Fatalf("WebSocket: %v\n%s", err, b.String())
		}
		b.Write(msg)
	}
	return b.String()
}
