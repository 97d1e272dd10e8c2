package kubeproxy

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
)

// fixedResolver resolves every Service to one address (a narrow stand-in
// for svcresolve; the resolver has its own tests against a real cluster).
type fixedResolver struct{ addr string }

func (f fixedResolver) Resolve(context.Context, string, string, int) (string, error) {
	return f.addr, nil
}

func TestAppServiceWebSocketRelay(t *testing.T) {
	var gotHost string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotHost = r.Host
		ws, err := (&websocket.Upgrader{Subprotocols: []string{"chat"}}).Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer ws.Close()
		mt, b, err := ws.ReadMessage()
		if err != nil {
			return
		}
		_ = ws.WriteMessage(mt, append([]byte("echo:"), b...))
		// The backend closes: the agent must say so (§13.5).
		_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye"), time.Now().Add(time.Second))
	}))
	t.Cleanup(srv.Close)
	p := newTestProxy(t, nil, func(o *Options) { o.Resolver = fixedResolver{strings.TrimPrefix(srv.URL, "http://")} })
	c := newFakeConn(t)
	send(t, p, c, protocol.TypeProxyRequest, "app1", protocol.ProxyRequest{Method: "GET", Path: "/socket", IsWebSocket: true, Protocol: "chat",
		ServiceName: "web", Namespace: "shop", ServicePort: 8080, Headers: protocol.Headers{"Host": {"shop.example.com"}}})
	r := c.response(t, "app1")
	if r.Status != http.StatusSwitchingProtocols || r.Headers["Upgrade"][0] != "websocket" || r.Headers["Sec-Websocket-Protocol"][0] != "chat" {
		t.Fatalf("answer = %d %v (err %q); want 101 with Upgrade and the negotiated protocol", r.Status, r.Headers, r.Err)
	}
	if gotHost != "shop.example.com" {
		t.Errorf("backend saw Host %q; want the original shop.example.com", gotHost)
	}
	// Raw payload plus message_type (first byte not an opcode, §6.7).
	send(t, p, c, protocol.TypeWSData, "", protocol.WebSocketData{RequestID: "app1", Data: "aGk=", MessageType: 1})
	env := c.next(t)
	var d protocol.WebSocketData
	mustDecode(t, env, &d)
	if env.Type != protocol.TypeProxyWebSocketData || d.RequestID != "app1" || d.StreamID != "app1" || d.MessageType != 1 || d.Data != frame(1, "echo:hi") {
		t.Fatalf("got %s %s; want text echo:hi with request_id, stream_id and message_type", env.Type, env.Payload)
	}
	env = c.next(t)
	var cl protocol.WebSocketClose
	mustDecode(t, env, &cl)
	if env.Type != protocol.TypeProxyWebSocketClose || cl.StreamID != "app1" || cl.RequestID != "app1" {
		t.Fatalf("got %s %s; want proxy_websocket_close with stream_id and request_id", env.Type, env.Payload)
	}
}

func TestAnAppWebSocketThatCannotConnectGetsTheBackendStatus(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no websockets here", http.StatusNotFound)
	}))
	t.Cleanup(srv.Close)
	p := newTestProxy(t, nil, func(o *Options) { o.Resolver = fixedResolver{strings.TrimPrefix(srv.URL, "http://")} })
	c := newFakeConn(t)
	send(t, p, c, protocol.TypeProxyRequest, "app2", protocol.ProxyRequest{Path: "/ws", IsWebSocket: true,
		ServiceName: "web", Namespace: "shop", ServicePort: 80, SupportsResponseStreaming: true})
	r := c.response(t, "app2")
	if r.Status != http.StatusNotFound || !strings.Contains(string(r.Body), "no websockets here") {
		t.Fatalf("answer = %d %q (err %q); want the backend's 404 and its message", r.Status, r.Body, r.Err)
	}
}
