package kubeproxy

import (
	"bytes"
	"encoding/base64"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	xwebsocket "golang.org/x/net/websocket"

	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

// The test cluster has no kubelet, so exec, attach and port-forward cannot
// reach a real container. These tests relay to a small in-test upstream
// that stands in for the API server and speaks the two protocols kubectl
// uses: v4.channel.k8s.io (exec/attach: a channel byte per binary frame,
// 0 stdin, 1 stdout, 2 stderr, 3 status, 4 resize) and portforward.k8s.io.

type upstream struct {
	mu    sync.Mutex
	auth  []string
	stall chan struct{} // when set, the upstream stops reading
}

func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u.mu.Lock()
	u.auth = append(u.auth, r.Header.Get("Authorization"))
	stall := u.stall
	u.mu.Unlock()
	up := websocket.Upgrader{Subprotocols: []string{"v4.channel.k8s.io", "portforward.k8s.io"}}
	ws, err := up.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	defer ws.Close()
	if stall != nil {
		<-stall
		return
	}
	for {
		mt, data, err := ws.ReadMessage()
		if err != nil {
			return
		}
		if ws.Subprotocol() == "portforward.k8s.io" {
			_ = ws.WriteMessage(mt, data) // echo, untouched
			continue
		}
		if mt != websocket.BinaryMessage || len(data) == 0 {
			_ = ws.WriteMessage(websocket.BinaryMessage, append([]byte{2}, "protocol error: want binary channel frames"...))
			continue
		}
		switch ch, rest := data[0], string(data[1:]); {
		case ch == 0 && rest == "exit\n":
			_ = ws.WriteMessage(websocket.BinaryMessage, append([]byte{3}, `{"status":"Success"}`...))
			_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
			return
		case ch == 0:
			_ = ws.WriteMessage(websocket.BinaryMessage, append([]byte{1}, "out:"+rest...))
			_ = ws.WriteMessage(websocket.BinaryMessage, append([]byte{2}, "err:"+rest...))
		case ch == 4:
			_ = ws.WriteMessage(websocket.BinaryMessage, append([]byte{1}, "resize:"+rest...))
		}
	}
}

func frame(op byte, s string) string {
	return base64.StdEncoding.EncodeToString(append([]byte{op}, s...))
}

// wsData waits for the next relay frame and returns its opcode and bytes.
func (f *fakeConn) wsData(t *testing.T, id string) (byte, string) {
	t.Helper()
	env := f.next(t)
	if env.Type != protocol.TypeProxyWebSocketData || env.RequestID != id {
		t.Fatalf("got %s for %q: %s; want proxy_websocket_data for %q", env.Type, env.RequestID, env.Payload, id)
	}
	var d protocol.WebSocketData
	mustDecode(t, env, &d)
	raw, err := base64.StdEncoding.DecodeString(d.Data)
	if err != nil || len(raw) == 0 || d.StreamID != id {
		t.Fatalf("bad relay data %s", env.Payload)
	}
	return raw[0], string(raw[1:])
}

func TestExecRelayTranslatesChannelsForV4(t *testing.T) {
	up := &upstream{}
	_, cfg := tlsBackend(t, up)
	p := newTestProxy(t, cfg, nil)
	c := newFakeConn(t)
	send(t, p, c, protocol.TypeWSStart, "", protocol.WebSocketStart{StreamID: "s1", Method: "GET",
		Path: "/api/v1/namespaces/app/pods/web-0/exec", Query: "command=sh&stdin=true&stdout=true&stderr=true"})
	// Text from the control plane is stdin; it may arrive while the relay still dials.
	send(t, p, c, protocol.TypeWSData, "", protocol.WebSocketData{StreamID: "s1", Data: frame(1, "ls\n")})
	for _, want := range []string{"out:ls\n", "err:ls\n"} {
		if op, got := c.wsData(t, "s1"); op != websocket.TextMessage || got != want {
			t.Errorf("got opcode %d %q; want text %q (channel byte stripped, §6.8)", op, got, want)
		}
	}
	// Binary from the control plane passes unchanged: a resize on channel 4.
	send(t, p, c, protocol.TypeWSData, "", protocol.WebSocketData{StreamID: "s1", Data: frame(2, "\x04{\"Width\":80}")})
	if op, got := c.wsData(t, "s1"); op != websocket.TextMessage || got != `resize:{"Width":80}` {
		t.Errorf("got opcode %d %q; want the resize echoed", op, got)
	}
	send(t, p, c, protocol.TypeWSData, "", protocol.WebSocketData{StreamID: "s1", Data: frame(1, "exit\n")})
	if op, got := c.wsData(t, "s1"); op != websocket.TextMessage || got != `{"status":"Success"}` {
		t.Errorf("got opcode %d %q; want the status", op, got)
	}
	env := c.next(t)
	var cl protocol.WebSocketClose
	mustDecode(t, env, &cl)
	if env.Type != protocol.TypeProxyWebSocketClose || cl.StreamID != "s1" {
		t.Fatalf("got %s %s; want proxy_websocket_close for s1", env.Type, env.Payload)
	}
	if up.auth[0] != "Bearer sa-token" {
		t.Errorf("upstream saw Authorization %q; want the ServiceAccount token", up.auth[0])
	}
	eventually(t, func() bool { return p.InFlight() == 0 }, "the relay released its slot")
}

func TestRawFramesKeepTheChannelByte(t *testing.T) {
	_, cfg := tlsBackend(t, &upstream{})
	p := newTestProxy(t, cfg, nil)
	c := newFakeConn(t)
	send(t, p, c, protocol.TypeWSStart, "", protocol.WebSocketStart{StreamID: "s2", Path: "/api/v1/namespaces/app/pods/web-0/attach",
		Protocol: "v4.channel.k8s.io", RawFrames: true, Headers: protocol.Headers{"Authorization": {"Bearer user-token"}}})
	send(t, p, c, protocol.TypeWSData, "", protocol.WebSocketData{StreamID: "s2", Data: frame(2, "\x00hi\n")})
	if op, got := c.wsData(t, "s2"); op != websocket.BinaryMessage || got != "\x01out:hi\n" {
		t.Errorf("got opcode %d %q; want binary with channel 1 kept", op, got)
	}
	send(t, p, c, protocol.TypeWSClose, "", protocol.WebSocketClose{StreamID: "s2"})
	for env := c.next(t); env.Type != protocol.TypeProxyWebSocketClose; env = c.next(t) {
	}
}

func TestPortForwardThroughAProxyRequestIsAnsweredAtOnceAndRelayedUnchanged(t *testing.T) {
	up := &upstream{}
	_, cfg := tlsBackend(t, up)
	p := newTestProxy(t, cfg, nil)
	c := newFakeConn(t)
	send(t, p, c, protocol.TypeProxyRequest, "pf1", protocol.ProxyRequest{Method: "GET", Path: "/api/v1/namespaces/app/pods/web-0/portforward",
		Query: "ports=8080", Protocol: "portforward.k8s.io", Headers: protocol.Headers{"Authorization": {"Bearer cp-token"}}})
	if r := c.response(t, "pf1"); r.Status != 200 || len(r.Body) != 0 || r.Err != "" {
		t.Fatalf("proxy_request answer = %+v; want 200 with no body (§6.3 rule 2)", r)
	}
	send(t, p, c, protocol.TypeProxyWebSocketData, "pf1", protocol.WebSocketData{StreamID: "pf1", Data: frame(2, "\x00\x90\x1fGET / HTTP/1.1\r\n")})
	if op, got := c.wsData(t, "pf1"); op != websocket.BinaryMessage || got != "\x00\x90\x1fGET / HTTP/1.1\r\n" {
		t.Errorf("got opcode %d %q; want the bytes unchanged", op, got)
	}
	if up.auth[0] != "Bearer cp-token" {
		t.Errorf("upstream saw Authorization %q; want the control plane's, verbatim", up.auth[0])
	}
	send(t, p, c, protocol.TypeProxyCancel, "pf1", struct{}{})
	eventually(t, func() bool { return p.InFlight() == 0 }, "proxy_cancel ended the relay")
	c.expectNone(t, 200*time.Millisecond) // cancelled: nothing more is sent (§6.6)
}

func TestARelayWhoseBackendStopsReadingClosesWithAnError(t *testing.T) {
	stall := make(chan struct{})
	defer close(stall)
	_, cfg := tlsBackend(t, &upstream{stall: stall})
	p := newTestProxy(t, cfg, nil)
	c := newFakeConn(t)
	send(t, p, c, protocol.TypeWSStart, "", protocol.WebSocketStart{StreamID: "s3", Path: "/api/v1/namespaces/a/pods/b/exec", RawFrames: true})
	big := frame(2, strings.Repeat("x", 256<<10))
	deadline := time.Now().Add(20 * time.Second)
	for p.lookupRelay(c, "s3") != nil && time.Now().Before(deadline) {
		send(t, p, c, protocol.TypeWSData, "", protocol.WebSocketData{StreamID: "s3", Data: big})
	}
	env := c.next(t)
	var e protocol.ErrorPayload
	mustDecode(t, env, &e)
	if env.Type != protocol.TypeProxyError || e.RequestID != "s3" || !strings.Contains(e.Error, "did not accept data") {
		t.Fatalf("got %s %s; want proxy_error saying the backend stopped accepting data", env.Type, env.Payload)
	}
	if env := c.next(t); env.Type != protocol.TypeProxyWebSocketClose {
		t.Fatalf("got %s; want proxy_websocket_close after the error", env.Type)
	}
}

func TestRelayPathsAreValidated(t *testing.T) {
	p := newTestProxy(t, nil, nil)
	c := newFakeConn(t)
	for i, path := range []string{"/api/v1/../secrets", "/api//v1", "/api/v1/%2e%2e", "/api\\v1", "/etc/passwd", "/api/v1\r\n"} {
		id := string(rune('a' + i))
		send(t, p, c, protocol.TypeWSStart, "", protocol.WebSocketStart{StreamID: id, Path: path})
		env := c.next(t)
		var e protocol.ErrorPayload
		mustDecode(t, env, &e)
		if env.Type != protocol.TypeProxyError || e.RequestID != id || !strings.Contains(e.Error, "relay path") {
			t.Errorf("path %q: got %s %s; want proxy_error", path, env.Type, env.Payload)
		}
		if env := c.next(t); env.Type != protocol.TypeProxyWebSocketClose {
			t.Errorf("path %q: got %s; want proxy_websocket_close", path, env.Type)
		}
	}
}

func (p *Proxy) lookupRelay(c *fakeConn, id string) *relay {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.relays[callKey{c.gen, id}]
}

func eventually(t *testing.T, cond func() bool, what string) {
	t.Helper()
	testbin.Eventually(t, 10*time.Second, what, cond)
}

func TestARelayEndsAtItsDeadline(t *testing.T) {
	_, cfg := tlsBackend(t, &upstream{})
	p := newTestProxy(t, cfg, nil)
	c := newFakeConn(t)
	send(t, p, c, protocol.TypeProxyRequest, "d1", protocol.ProxyRequest{Path: "/api/v1/namespaces/a/pods/b/exec", IsWebSocket: true,
		Timeout: protocol.Timeout(300 * time.Millisecond)})
	if r := c.response(t, "d1"); r.Status != 200 {
		t.Fatalf("answer = %+v; want 200", r)
	}
	env := c.next(t)
	var e protocol.ErrorPayload
	mustDecode(t, env, &e)
	if env.Type != protocol.TypeProxyError || !strings.Contains(e.Error, "deadline") {
		t.Fatalf("got %s %s; want proxy_error about the deadline", env.Type, env.Payload)
	}
	if env := c.next(t); env.Type != protocol.TypeProxyWebSocketClose {
		t.Fatalf("got %s; want proxy_websocket_close", env.Type)
	}
}

// The API server's channel protocols (wsstream) read frames with
// golang.org/x/net/websocket, which takes every continuation frame for a
// message of its own. A stdin message longer than the relay's write buffer
// went out fragmented and lost a byte per fragment (read as a channel
// number): `kubectl cp` of 1 MiB into a pod hung. This upstream reads like
// the API server does.
func TestLongStdinMessagesReachTheAPIServerIntactAsWholeChannelMessages(t *testing.T) {
	got := make(chan [][]byte, 1)
	up := xwebsocket.Server{
		Handshake: func(c *xwebsocket.Config, _ *http.Request) error {
			c.Protocol = []string{"v4.channel.k8s.io"}
			return nil
		},
		Handler: func(ws *xwebsocket.Conn) {
			var msgs [][]byte
			total := 0
			for total < 100<<10 {
				var m []byte
				if err := xwebsocket.Message.Receive(ws, &m); err != nil {
					break
				}
				msgs = append(msgs, m)
				total += len(m) - 1
			}
			got <- msgs
		},
	}
	_, cfg := tlsBackend(t, up)
	p := newTestProxy(t, cfg, nil)
	c := newFakeConn(t)
	send(t, p, c, protocol.TypeWSStart, "", protocol.WebSocketStart{StreamID: "big", Path: "/api/v1/namespaces/a/pods/b/exec",
		Protocol: "v4.channel.k8s.io", RawFrames: true})
	stdin := make([]byte, 100<<10)
	for i := range stdin {
		stdin[i] = byte(i % 251)
	}
	send(t, p, c, protocol.TypeWSData, "", protocol.WebSocketData{StreamID: "big", Data: frame(2, "\x00"+string(stdin))})
	var msgs [][]byte
	select {
	case msgs = <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream did not receive 100 KiB of stdin")
	}
	var data []byte
	for i, m := range msgs {
		if len(m) == 0 || m[0] != 0 {
			t.Fatalf("message %d of %d starts with %v; want channel 0 on every message", i, len(msgs), m[:min(1, len(m))])
		}
		data = append(data, m[1:]...)
	}
	if !bytes.Equal(data, stdin) {
		t.Errorf("the upstream read %d bytes of stdin in %d messages; want the %d bytes sent, intact", len(data), len(msgs), len(stdin))
	}
}
