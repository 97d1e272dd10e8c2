package statusserver

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pipeops/pipeops-vm-agent/internal/health"
)

type link struct {
	state string
	reg   bool
}

func (l link) Link() (string, bool) { return l.state, l.reg }

func get(t *testing.T, h http.Handler, path string) (int, map[string]any, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("GET", path, nil)
	req.Host = "127.0.0.1:8080"
	h.ServeHTTP(rec, req)
	var m map[string]any
	_ = json.Unmarshal(rec.Body.Bytes(), &m)
	return rec.Code, m, rec.Body.String()
}

func TestReadyTellsTheTruth(t *testing.T) {
	h := health.New(nil)
	h.Require(health.ControlPlane, "connecting to https://api.example")
	h.Require(health.Kubernetes, "probing the API server")
	reg := prometheus.NewRegistry()
	s := New("127.0.0.1", 0, h, link{"reconnecting", false}, reg, nil)

	code, body, _ := get(t, s.Handler(), "/ready")
	if code != 503 || body["status"] != "not_ready" || !strings.Contains(body["reason"].(string), "controlplane") {
		t.Fatalf("/ready = %d %v; want 503 not_ready naming the control plane", code, body)
	}
	h.Set(health.ControlPlane, true, "")
	h.Set(health.Kubernetes, true, "")
	if code, body, _ = get(t, s.Handler(), "/ready"); code != 200 || body["status"] != "ready" {
		t.Fatalf("/ready = %d %v; want 200 ready", code, body)
	}
	h.Set(health.Kubernetes, false, "API server unreachable")
	if code, body, _ = get(t, s.Handler(), "/ready"); code != 503 || body["reason"] != "kubernetes: API server unreachable" {
		t.Fatalf("/ready = %d %v; want 503 with the kubernetes reason", code, body)
	}
	// Liveness stays 200 throughout.
	if code, body, _ = get(t, s.Handler(), "/health"); code != 200 || body["connection_state"] != "reconnecting" {
		t.Fatalf("/health = %d %v", code, body)
	}
}

func TestVersionAndMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "pipeops_agent_test_total", Help: "t"})
	reg.MustRegister(c)
	c.Inc()
	s := New("127.0.0.1", 0, health.New(nil), nil, reg, nil)
	code, body, _ := get(t, s.Handler(), "/version")
	if code != 200 || body["version"] == "" || !strings.HasPrefix(body["go_version"].(string), "go") {
		t.Fatalf("/version = %d %v", code, body)
	}
	code, _, text := get(t, s.Handler(), "/metrics")
	if code != 200 || !strings.Contains(text, "pipeops_agent_test_total 1") {
		t.Fatalf("/metrics = %d\n%s", code, text)
	}
	// There is no raw Kubernetes proxy on the local port (protocol.md §13.15).
	if code, _, _ := get(t, s.Handler(), "/api/v1/namespaces"); code != 404 {
		t.Fatalf("/api/v1/namespaces = %d; want 404", code)
	}
}

func TestOnALoopbackBindOnlyLoopbackHostsAreAnswered(t *testing.T) {
	for _, bind := range []string{"127.0.0.1", "0.0.0.0"} {
		s := New(bind, 0, health.New(nil), nil, prometheus.NewRegistry(), nil)
		for _, host := range []string{"127.0.0.1:8080", "localhost:8080", "[::1]:8080", "attacker.example:8080", "rebind.attacker.example"} {
			for _, path := range []string{"/health", "/ready", "/version", "/metrics"} {
				rec := httptest.NewRecorder()
				req := httptest.NewRequest("GET", path, nil)
				req.Host = host
				s.Handler().ServeHTTP(rec, req)
				refused := rec.Code == http.StatusForbidden
				want := bind == "127.0.0.1" && strings.Contains(host, "attacker")
				if refused != want {
					t.Errorf("bind %s, Host %s, GET %s = %d; want refused=%v", bind, host, path, rec.Code, want)
				}
			}
		}
	}
}
