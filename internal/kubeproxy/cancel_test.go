package kubeproxy_test

import (
	"context"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"k8s.io/client-go/rest"
)

// streamer stands in for the API server where the test must observe the
// backend side: /api/stream sends a line every 50 ms until the request ends
// (like a watch); /api/v1/.../exec upgrades and echoes. It counts open
// handlers and closed connections. HTTP/1.1 only, so a cancelled request
// shows as a closed connection.
type streamer struct {
	open, closed, served atomic.Int32
}

func (s *streamer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.open.Add(1)
	defer s.open.Add(-1)
	s.served.Add(1)
	if websocket.IsWebSocketUpgrade(r) {
		ws, err := (&websocket.Upgrader{Subprotocols: []string{"v4.channel.k8s.io"}}).Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer ws.Close()
		for {
			mt, b, err := ws.ReadMessage()
			if err != nil {
				return
			}
			_ = ws.WriteMessage(mt, b)
		}
	}
	w.Header().Set("Content-Type", "application/json")
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for i := 0; ; i++ {
		if _, err := fmt.Fprintf(w, "{\"type\":\"ADDED\",\"n\":%d}\n", i); err != nil {
			return
		}
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
			return
		case <-tick.C:
		}
	}
}

func startStreamer(t *testing.T) (*streamer, *rest.Config) {
	t.Helper()
	s := &streamer{}
	srv := httptest.NewUnstartedServer(s)
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateClosed {
			s.closed.Add(1)
		}
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	return s, &rest.Config{Host: srv.URL, BearerToken: "sa-token", TLSClientConfig: rest.TLSClientConfig{CAData: ca}}
}

func TestCancellingARequestClosesTheBackendConnection(t *testing.T) {
	backend, identity := startStreamer(t)
	s := startStack(t, identity, nil)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.server()+"/api/stream?watch=true", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	if _, err := resp.Body.Read(buf); err != nil {
		t.Fatalf("read the first watch event: %v", err)
	}
	if backend.open.Load() != 1 {
		t.Fatalf("backend has %d open requests; want 1", backend.open.Load())
	}
	cancel() // the client goes away: the front door sends proxy_cancel
	resp.Body.Close()
	eventually(t, 10*time.Second, "the backend request ended and its connection closed", func() bool {
		return backend.open.Load() == 0 && backend.closed.Load() >= 1
	})
	eventually(t, 5*time.Second, "the agent released the request", func() bool { return s.proxy.InFlight() == 0 })
}

func TestADroppedControlPlaneConnectionEndsEveryCallWithoutHangsOrLeaks(t *testing.T) {
	backend, identity := startStreamer(t)
	s := startStack(t, identity, nil)
	before := runtime.NumGoroutine()

	const watches = 4
	errs := make(chan error, watches+1)
	for i := 0; i < watches; i++ {
		go func() {
			resp, err := http.Get(s.server() + "/api/stream?watch=true")
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			_, err = io.Copy(io.Discard, resp.Body)
			errs <- fmt.Errorf("watch ended: %w", err)
		}()
	}
	wsURL := "ws" + strings.TrimPrefix(s.server(), "http") + "/api/v1/namespaces/a/pods/b/exec?command=sh"
	ws, _, err := websocket.DefaultDialer.Dial(wsURL, http.Header{"Sec-WebSocket-Protocol": {"v4.channel.k8s.io"}})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	if err := ws.WriteMessage(websocket.BinaryMessage, []byte("\x00ping")); err != nil {
		t.Fatal(err)
	}
	if _, b, err := ws.ReadMessage(); err != nil || string(b) != "\x00ping" {
		t.Fatalf("relay echo = %q, %v", b, err)
	}
	go func() {
		_, _, err := ws.ReadMessage()
		errs <- fmt.Errorf("relay ended: %w", err)
	}()
	eventually(t, 10*time.Second, "every call is in flight", func() bool { return s.proxy.InFlight() == watches+1 })

	s.plane.DropAll() // the WebSocket dies without a close frame

	for i := 0; i < watches+1; i++ {
		select {
		case err := <-errs:
			if err == nil || strings.HasSuffix(err.Error(), ": <nil>") {
				t.Errorf("a call ended cleanly after the drop (%v); want an error", err)
			}
		case <-time.After(15 * time.Second):
			t.Fatalf("%d of %d calls still hang 15s after the connection dropped", watches+1-i, watches+1)
		}
	}
	eventually(t, 10*time.Second, "the agent cancelled every call", func() bool { return s.proxy.InFlight() == 0 })
	eventually(t, 10*time.Second, "the backend saw every request end", func() bool { return backend.open.Load() == 0 })
	// No goroutine of the proxy survives, and the process as a whole is back
	// near its level (the agent reconnects, so a few link goroutines differ).
	eventually(t, 15*time.Second, "no kubeproxy goroutine left", func() bool { return proxyGoroutines() == "" })
	eventually(t, 15*time.Second, fmt.Sprintf("goroutines back near the level before the calls (%d)", before), func() bool {
		http.DefaultClient.CloseIdleConnections()
		return runtime.NumGoroutine() <= before+8
	})
}

// proxyGoroutines returns the stacks of goroutines running kubeproxy code.
func proxyGoroutines() string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "pipeops-vm-agent/internal/kubeproxy.") {
			out = append(out, g)
		}
	}
	return strings.Join(out, "\n\n")
}
