package dashboard

import (
	"net/http"
	"strings"
	"testing"

	"github.com/gorilla/websocket"
)

func TestCrossOriginAndRebindingRequestsAreRefused(t *testing.T) {
	f := newFixture(t, Options{EnableSSE: true, EnableWebSocket: true, LoopbackOnly: true})
	self := strings.TrimPrefix(f.http.URL, "http://")
	port := self[strings.LastIndex(self, ":"):]
	cases := []struct {
		name   string
		host   string // Host header; "" keeps the real one
		origin string
		want   int
	}{
		{"no Origin (curl, scripts) is allowed", "", "", 200},
		{"the page's own origin is allowed", "", "http://" + self, 200},
		{"localhost through an SSH tunnel is allowed", "localhost" + port, "http://localhost" + port, 200},
		{"an IPv6 loopback literal is allowed", "[::1]" + port, "", 200},
		{"another site's origin is refused", "", "http://evil.example", 403},
		{"the same host on another port is refused", "", "http://127.0.0.1:1", 403},
		{"an opaque null origin is refused", "", "null", 403},
		{"a rebound DNS name is refused even with a matching Origin", "evil.example" + port, "http://evil.example" + port, 403},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, path := range []string{"/", "/api/status", "/api/logs"} {
				req, _ := http.NewRequest(http.MethodGet, f.http.URL+path, nil)
				if tc.host != "" {
					req.Host = tc.host
				}
				if tc.origin != "" {
					req.Header.Set("Origin", tc.origin)
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != tc.want {
					t.Errorf("GET %s = %d; want %d", path, resp.StatusCode, tc.want)
				}
			}
			h := http.Header{}
			if tc.host != "" {
				h.Set("Host", tc.host)
			}
			if tc.origin != "" {
				h.Set("Origin", tc.origin)
			}
			c, resp, err := websocket.DefaultDialer.Dial("ws://"+self+"/ws", h)
			if tc.want == 200 {
				if err != nil {
					t.Fatalf("WebSocket refused: %v", err)
				}
				c.Close()
				return
			}
			if err == nil {
				c.Close()
				t.Fatal("cross-origin WebSocket accepted")
			}
			if resp == nil || resp.StatusCode != http.StatusForbidden {
				t.Fatalf("cross-origin WebSocket: %v; want 403", err)
			}
		})
	}
}

func TestPageAllowsOnlyItsOwnInlineCodeAndSameOriginConnections(t *testing.T) {
	f := newFixture(t, Options{EnableSSE: true, EnableWebSocket: true})
	resp, err := http.Get(f.http.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	csp := resp.Header.Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'none'", "connect-src 'self'", "script-src 'sha256-", "style-src 'sha256-", "frame-ancestors 'none'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("CSP %q lacks %q", csp, want)
		}
	}
	if strings.Contains(csp, "unsafe-inline") || strings.Contains(csp, "http") {
		t.Errorf("CSP %q allows inline code or another host", csp)
	}
	if resp.Header.Get("X-Frame-Options") != "DENY" {
		t.Error("page may be framed")
	}
}
