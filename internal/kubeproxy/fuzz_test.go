package kubeproxy

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

// FuzzProxyRequest decodes arbitrary proxy_request payloads and runs every
// validation the agent applies before it forwards one: path and query
// cleaning, the relay path check, the deadline, the body modes, the
// Service reference and the backend request's headers. Nothing may panic,
// and whatever passes must be safe to forward: a clean absolute path, no
// control characters in header values, no hop-by-hop or Impersonate-*
// headers, the control plane's Authorization only toward the Kubernetes
// API, and a URL whose host the request cannot change.
// Corpus: testdata/fuzz/FuzzProxyRequest. CI runs it by count (scripts/test.sh).
func FuzzProxyRequest(f *testing.F) {
	for _, s := range []string{
		`{"method":"GET","path":"/api/v1/pods","query":"watch=true&limit=5","headers":{"Authorization":"Bearer x","Impersonate-User":["root"]}}`,
		`{"method":"POST","path":"/apis/apps/v1/namespaces/a/deployments","body":"eyJhIjoxfQ==","body_encoding":"base64","timeout":30000}`,
		`{"method":"PUT","path":"/api/x","body":{"a":[1,2]},"deadline":"2026-01-02T03:04:05.123456789Z"}`,
		`{"path":"/shop","service_name":"web","namespace":"shop","service_port":8080,"scheme":"https","headers":{"Host":"shop.example.com","Connection":"X-Drop","X-Drop":"1"}}`,
		`{"path":"/ws","is_websocket":true,"protocol":"chat","service_name":"web","namespace":"shop","service_port":"80"}`,
		`{"path":"/api/v1/namespaces/a/pods/b/exec","headers":{"Upgrade":"websocket","Sec-WebSocket-Protocol":"v4.channel.k8s.io"}}`,
		`{"path":"/%2e%2e/etc/passwd"}`, `{"path":"//evil.example/x"}`, `{"path":"/a\r\nX-Injected: 1"}`, `{"path":"http://h/x"}`,
		`{"path":"/api","headers":{"X-A":"v\r\nInjected: 1"}}`, `{"path":"/api","use_streaming":true,"body_binary":true,"body_size":5}`,
		`{"path":"/api","timeout":"90s"}`, `{"path":"/api","timeout":-1}`, `{"path":"/api","service_port":70000,"service_name":"a.b","namespace":"c"}`,
		`{}`, `[]`, `{"headers":null,"body":null}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		env := &protocol.Envelope{Type: protocol.TypeProxyRequest, RequestID: "fuzz", Payload: payload}
		var req protocol.ProxyRequest
		if err := env.DecodePayload(&req); err != nil {
			return
		}
		_ = isWebSocket(&req)
		_ = isLongLived(&req)
		_ = req.Streamed()
		if _, err := req.InlineBody(); err != nil && err.Error() == "" {
			t.Fatal("an inline body error without a message")
		}
		p := &Proxy{o: Options{Now: time.Now, DefaultTimeout: time.Minute}}
		_, _ = p.deadline(&req, false)
		if err := relayPath(req.Path); err == nil {
			if strings.ContainsAny(req.Path, "%\\\r\n\x00") || strings.Contains(req.Path, "..") || strings.Contains(req.Path, "//") {
				t.Fatalf("relay path %q accepted", req.Path)
			}
		}
		_ = subprotocols(relaySpec{protocol: req.Protocol, headers: req.Headers, path: req.Path})
		for k := range dialHeaders(req.Headers) {
			if isImpersonation(k) || hopByHopRequest[k] {
				t.Fatalf("dialHeaders kept %s", k)
			}
		}
		ref, refErr := serviceRef(&req)
		if refErr == nil && (strings.Contains(ref.Name+ref.Namespace, ".") || ref.Port < 1 || ref.Port > 65535) {
			t.Fatalf("service reference %+v accepted", ref)
		}
		path, err := cleanPath(req.Path)
		if err != nil {
			if !errors.Is(err, ErrBadRequest) {
				t.Fatalf("cleanPath error %v does not wrap ErrBadRequest", err)
			}
			return
		}
		if !strings.HasPrefix(path, "/") || strings.Contains(path, "..") || strings.Contains(path, "://") || strings.ContainsAny(path, "\r\n\x00") {
			t.Fatalf("cleanPath(%q) = %q passed", req.Path, path)
		}
		for _, kube := range []bool{true, false} {
			base := &url.URL{Scheme: "https", Host: "backend.invalid:6443"}
			tgt := &target{url: base, kube: kube}
			setPath(tgt.url, "/prefix", path, req.Path)
			hreq, err := p.newRequest(context.Background(), &req, tgt, nil)
			if err != nil {
				continue
			}
			if hreq.URL.Host != "backend.invalid:6443" || hreq.URL.Scheme != "https" {
				t.Fatalf("path %q moved the request to %s", req.Path, hreq.URL)
			}
			if !strings.HasPrefix(hreq.URL.Path, "/prefix/") {
				t.Fatalf("path %q escaped the prefix: %q", req.Path, hreq.URL.Path)
			}
			for k, vs := range hreq.Header {
				if isImpersonation(k) || hopByHopRequest[k] || k == "Authorization" && !kube {
					t.Fatalf("header %s reached a backend (kube=%v)", k, kube)
				}
				for _, v := range vs {
					if strings.ContainsAny(v, "\r\n\x00") {
						t.Fatalf("header %s carries a control character: %q", k, v)
					}
				}
			}
			if strings.ContainsAny(hreq.Host, "\r\n\x00") {
				t.Fatalf("Host %q carries a control character", hreq.Host)
			}
		}
	})
}

// FuzzParseFrame feeds arbitrary relay data from the control plane to the
// frame parser (§4.4): it must never panic, and what it returns must be a
// close, or a frame with a WebSocket data or ping/pong opcode and no more
// bytes than were sent.
func FuzzParseFrame(f *testing.F) {
	for _, s := range []struct {
		data string
		mt   int
	}{
		{base64.StdEncoding.EncodeToString([]byte("\x01hello")), 0},
		{base64.StdEncoding.EncodeToString([]byte("\x02\x00\x01\x02")), 2},
		{base64.StdEncoding.EncodeToString([]byte("\x08")), 0},
		{base64.StdEncoding.EncodeToString([]byte("\x09ping")), 0},
		{base64.StdEncoding.EncodeToString([]byte("raw text")), 1},
		{"", 0}, {"!!!", 2}, {"AA==", 7},
	} {
		f.Add(s.data, s.mt)
	}
	f.Fuzz(func(t *testing.T, data string, mt int) {
		d := protocol.WebSocketData{Data: data, MessageType: protocol.FlexInt(mt)}
		fr, err := parseFrame(&d)
		if err != nil {
			return
		}
		raw, _ := base64.StdEncoding.DecodeString(data)
		if len(fr.data) > len(raw) {
			t.Fatalf("frame of %d bytes from %d", len(fr.data), len(raw))
		}
		if fr.close {
			return
		}
		switch fr.op {
		case websocket.TextMessage, websocket.BinaryMessage, websocket.PingMessage, websocket.PongMessage:
		default:
			t.Fatalf("opcode %d from %q / message_type %d", fr.op, data, mt)
		}
	})
}

// FuzzReadBackendMessage plays a backend that completes the WebSocket
// handshake (announcing permessage-deflate or not) and then sends arbitrary
// bytes as frames. Reading a message with the relay's reader must never
// panic and never return more than the limit, however the frames inflate.
func FuzzReadBackendMessage(f *testing.F) {
	f.Add(true, []byte{0x82, 0x05, 'h', 'e', 'l', 'l', 'o'})
	f.Add(false, []byte{0x81, 0x03, 'a', 'b', 'c'})
	f.Add(true, []byte{0xc2, 0x07, 0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00})                               // "Hello", compressed
	f.Add(true, []byte{0xc2, 0x0c, 0xed, 0xc1, 0x01, 0x0d, 0x00, 0x00, 0x00, 0xc2, 0xa0, 0xf5, 0x4f, 0x6d}) // zeros, compressed
	f.Add(false, []byte{0x02, 0x02, 'a', 'b', 0x80, 0x01, 'c'})                                             // fragmented
	f.Add(false, []byte{0x88, 0x02, 0x03, 0xe8})                                                            // close
	f.Add(false, []byte{0x82, 0x7f, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff})                                    // huge length
	const limit = 1 << 10
	f.Fuzz(func(t *testing.T, deflate bool, frames []byte) {
		client, server := net.Pipe()
		defer client.Close()
		go func() {
			defer server.Close()
			br := bufio.NewReader(server)
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			resp := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " +
				testbin.AcceptKey(req.Header.Get("Sec-WebSocket-Key")) + "\r\n"
			if deflate {
				resp += "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"
			}
			if _, err := io.WriteString(server, resp+"\r\n"); err != nil {
				return
			}
			_, _ = server.Write(frames)
		}()
		d := websocket.Dialer{NetDialContext: func(context.Context, string, string) (net.Conn, error) { return client, nil }, HandshakeTimeout: 5 * time.Second}
		ws, _, err := d.Dial("ws://backend.invalid/ws", nil)
		if err != nil {
			return
		}
		defer ws.Close()
		ws.SetReadLimit(limit)
		_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
		for i := 0; i < 4; i++ {
			_, data, err := readMessage(ws, limit)
			if err != nil {
				return
			}
			if len(data) > limit {
				t.Fatalf("read a %d-byte message past the %d-byte limit", len(data), limit)
			}
		}
	})
}
