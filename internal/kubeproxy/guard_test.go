package kubeproxy

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

// headerLog records the headers each backend request carried.
type headerLog struct {
	mu   sync.Mutex
	seen []http.Header
}

func (l *headerLog) add(h http.Header) {
	l.mu.Lock()
	l.seen = append(l.seen, h.Clone())
	l.mu.Unlock()
}

func (l *headerLog) last(t *testing.T) http.Header {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.seen) == 0 {
		t.Fatal("the backend saw no request")
	}
	return l.seen[len(l.seen)-1]
}

var controlPlaneHeaders = protocol.Headers{
	"Authorization":        {"Bearer control-plane-credential"},
	"Impersonate-User":     {"system:admin"},
	"Impersonate-Group":    {"system:masters"},
	"impersonate-uid":      {"0"},
	"Impersonate-Extra-Ab": {"x"},
	"X-Kept":               {"yes"},
}

func TestTheControlPlanesAuthorizationReachesOnlyTheKubernetesAPIAndImpersonationNothing(t *testing.T) {
	var svc, kube headerLog
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		svc.add(r.Header)
		if websocket.IsWebSocketUpgrade(r) {
			ws, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
			if err == nil {
				ws.Close()
			}
			return
		}
		fmt.Fprint(w, "ok")
	}))
	t.Cleanup(backend.Close)
	_, cfg := tlsBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		kube.add(r.Header)
		if websocket.IsWebSocketUpgrade(r) {
			ws, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
			if err == nil {
				ws.Close()
			}
			return
		}
		fmt.Fprint(w, "{}")
	}))
	p := newTestProxy(t, cfg, func(o *Options) { o.Resolver = fixedResolver{strings.TrimPrefix(backend.URL, "http://")} })
	c := newFakeConn(t)

	noImpersonation := func(t *testing.T, h http.Header) {
		t.Helper()
		for k := range h {
			if strings.HasPrefix(k, "Impersonate-") {
				t.Errorf("the backend got %s: %v", k, h[k])
			}
		}
		if h.Get("X-Kept") != "yes" {
			t.Errorf("an ordinary header was dropped too: %v", h)
		}
	}
	t.Run("HTTP to a Service", func(t *testing.T) {
		send(t, p, c, protocol.TypeProxyRequest, "h1", protocol.ProxyRequest{Method: "GET", Path: "/", Headers: controlPlaneHeaders,
			ServiceName: "web", Namespace: "shop", ServicePort: 80})
		if r := c.response(t, "h1"); r.Status != 200 {
			t.Fatalf("status %d, err %q", r.Status, r.Err)
		}
		h := svc.last(t)
		if h.Get("Authorization") != "" {
			t.Errorf("the Service got the control plane's Authorization %q", h.Get("Authorization"))
		}
		noImpersonation(t, h)
	})
	t.Run("app WebSocket to a Service", func(t *testing.T) {
		send(t, p, c, protocol.TypeProxyRequest, "h2", protocol.ProxyRequest{Method: "GET", Path: "/ws", IsWebSocket: true, Headers: controlPlaneHeaders,
			ServiceName: "web", Namespace: "shop", ServicePort: 80})
		if r := c.response(t, "h2"); r.Status != http.StatusSwitchingProtocols {
			t.Fatalf("status %d, err %q", r.Status, r.Err)
		}
		for env := c.next(t); env.Type != protocol.TypeProxyWebSocketClose; env = c.next(t) {
		} // the backend hung up at once
		h := svc.last(t)
		if h.Get("Authorization") != "" {
			t.Errorf("the Service got the control plane's Authorization %q", h.Get("Authorization"))
		}
		noImpersonation(t, h)
	})
	t.Run("HTTP to the Kubernetes API", func(t *testing.T) {
		send(t, p, c, protocol.TypeProxyRequest, "h3", protocol.ProxyRequest{Method: "GET", Path: "/api/v1/pods", Headers: controlPlaneHeaders})
		if r := c.response(t, "h3"); r.Status != 200 {
			t.Fatalf("status %d, err %q", r.Status, r.Err)
		}
		h := kube.last(t)
		if h.Get("Authorization") != "Bearer control-plane-credential" {
			t.Errorf("the API server got Authorization %q; want the control plane's, verbatim (§6.3 rule 5)", h.Get("Authorization"))
		}
		noImpersonation(t, h)
	})
	t.Run("kubectl relay to the Kubernetes API", func(t *testing.T) {
		send(t, p, c, protocol.TypeWSStart, "h4", protocol.WebSocketStart{StreamID: "h4", Path: "/api/v1/namespaces/a/pods/b/exec", Headers: controlPlaneHeaders})
		testbin.Eventually(t, 10*time.Second, "the API server sees the relay", func() bool {
			kube.mu.Lock()
			defer kube.mu.Unlock()
			return len(kube.seen) == 2
		})
		h := kube.last(t)
		if h.Get("Authorization") != "Bearer control-plane-credential" {
			t.Errorf("the API server got Authorization %q; want the control plane's", h.Get("Authorization"))
		}
		noImpersonation(t, h)
	})
}

func TestAnAppRelayClosesOnADeflateBombWithAClearReason(t *testing.T) {
	bomb := testbin.NewDeflateBomb()
	srv := httptest.NewServer(bomb)
	t.Cleanup(srv.Close)
	p := newTestProxy(t, nil, func(o *Options) { o.Resolver = fixedResolver{strings.TrimPrefix(srv.URL, "http://")} })
	c := newFakeConn(t)
	send(t, p, c, protocol.TypeProxyRequest, "bomb", protocol.ProxyRequest{Method: "GET", Path: "/ws", IsWebSocket: true,
		ServiceName: "web", Namespace: "shop", ServicePort: 80})
	if r := c.response(t, "bomb"); r.Status != http.StatusSwitchingProtocols {
		t.Fatalf("status %d, err %q; want 101", r.Status, r.Err)
	}
	if ext := <-bomb.Offered; ext != "" {
		t.Errorf("the agent offered %q to the backend; want no compression", ext)
	}
	env := c.next(t)
	var e protocol.ErrorPayload
	mustDecode(t, env, &e)
	if env.Type != protocol.TypeProxyError || !strings.Contains(e.Error, "larger than 1048576 bytes") || !strings.Contains(e.Error, "decompression") {
		t.Fatalf("got %s %s; want proxy_error saying the message inflated past 1 MiB", env.Type, env.Payload)
	}
	if env := c.next(t); env.Type != protocol.TypeProxyWebSocketClose {
		t.Fatalf("got %s; want proxy_websocket_close", env.Type)
	}
}

func TestBufferedResponsesShareOneMemoryBudget(t *testing.T) {
	big := bytes.Repeat([]byte("x"), 3<<20)
	release := make(chan struct{})
	_, cfg := tlsBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		if r.URL.Path == "/api/slow" {
			w.Header().Set("Content-Length", fmt.Sprint(len(big)))
			_, _ = w.Write(big[:1<<20])
			w.(http.Flusher).Flush()
			<-release
			_, _ = w.Write(big[1<<20:])
			return
		}
		_, _ = w.Write(big) // chunked: no Content-Length
	}))
	p := newTestProxy(t, cfg, func(o *Options) { o.MemoryBudget = 8 << 20 })
	c := newFakeConn(t)

	// Alone, a 3 MiB response fits: body plus encoded message stay under 8 MiB.
	send(t, p, c, protocol.TypeProxyRequest, "m1", protocol.ProxyRequest{Method: "GET", Path: "/api/big"})
	if r := c.response(t, "m1"); r.Err != "" || !bytes.Equal(r.Body, big) {
		t.Fatalf("err %q, %d bytes; want the 3 MiB body", r.Err, len(r.Body))
	}
	if n := p.budget.used.Load(); n != 0 {
		t.Fatalf("%d bytes still reserved after the response went out", n)
	}
	// A response whose Content-Length says 3 MiB reserves it before reading;
	// while it waits, a second one does not fit and fails at once, clearly.
	send(t, p, c, protocol.TypeProxyRequest, "m2", protocol.ProxyRequest{Method: "GET", Path: "/api/slow"})
	testbin.Eventually(t, 10*time.Second, "the first response holds its reservation", func() bool { return p.budget.used.Load() >= 3<<20 })
	send(t, p, c, protocol.TypeProxyRequest, "m3", protocol.ProxyRequest{Method: "GET", Path: "/api/big"})
	r := c.response(t, "m3")
	if !strings.Contains(r.Err, "proxy.memory_budget_bytes") || !strings.Contains(r.Err, "supports_response_streaming") {
		t.Fatalf("second response: status %d, err %q; want a clear over-budget error", r.Status, r.Err)
	}
	close(release)
	if r := c.response(t, "m2"); r.Err != "" || !bytes.Equal(r.Body, big) {
		t.Fatalf("first response: err %q, %d bytes", r.Err, len(r.Body))
	}
	testbin.Eventually(t, 5*time.Second, "the budget is whole again", func() bool { return p.budget.used.Load() == 0 })
	// Streaming responses do not use the budget.
	send(t, p, c, protocol.TypeProxyRequest, "m4", protocol.ProxyRequest{Method: "GET", Path: "/api/big", SupportsResponseStreaming: true})
	if r := c.response(t, "m4"); r.Err != "" || len(r.Body) != len(big) {
		t.Fatalf("streamed: err %q, %d bytes", r.Err, len(r.Body))
	}
}

func TestANewBufferedCallWaitsWhileTheBudgetIsMoreThanHalfUsed(t *testing.T) {
	b := newMemBudget(8 << 20)
	if !b.reserve(5 << 20) {
		t.Fatal("reserve 5 MiB of 8")
	}
	admitted := make(chan bool, 1)
	go func() { admitted <- b.admit(context.Background(), 1<<20) }()
	select {
	case <-admitted:
		t.Fatal("a new call was admitted while more than half the budget is in use")
	case <-time.After(200 * time.Millisecond):
	}
	if !b.reserve(2 << 20) {
		t.Fatal("growth of an admitted call must use the other half without waiting")
	}
	if b.reserve(2 << 20) {
		t.Fatal("growth past the budget must fail at once")
	}
	b.release(7 << 20)
	if !<-admitted {
		t.Fatal("the waiting call was not admitted once the budget was free")
	}
	ctx, cancel := context.WithCancel(context.Background())
	b.reserve(4 << 20)
	go func() { admitted <- b.admit(ctx, 1<<20) }()
	cancel()
	if <-admitted {
		t.Fatal("admit returned true after its context ended without room")
	}
	if got := b.used.Load(); got != 5<<20 {
		t.Fatalf("used = %d; want 5 MiB", got)
	}
}
