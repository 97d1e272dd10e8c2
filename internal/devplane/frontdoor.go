package devplane

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
)

// The front door turns ordinary HTTP into proxy traffic (protocol.md §6
// from the control plane's side), so real kubectl and helm reach a cluster
// through its agent:
//
//	ANY /clusters/{id}/k8s/<path>   → proxy_request (streamed both ways)
//	GET /clusters/{id}/k8s/<path>   with Upgrade: websocket → ws_start/ws_data/ws_close
//	GET /admin/frontdoor/kubeconfig?cluster_id=…  a kubeconfig for it
//
// "k8s" may carry relay options, "k8s-translated", "k8s-v4" or
// "k8s-translated-v5" (see FrontDoorOptions): they change only how
// WebSockets (exec, attach, port-forward) travel.
//
// Request bodies go out as proxy_request_chunk messages, responses come back
// as proxy_response_header/_chunk/_end, and a client that goes away turns
// into proxy_cancel. The client's Authorization header passes through to the
// agent, which hands it to the API server verbatim (§6.3 rule 5); without
// one, the agent uses its own ServiceAccount. The front door has no
// authentication of its own: serve it on loopback.
//
// A request with the header X-Devplane-Response-Mode: buffered asks the
// agent for one buffered proxy_response instead (§6.5, no
// supports_response_streaming); the header itself is not forwarded.

// FrontDoorPrefix is the front door's path prefix; the cluster id and
// "/k8s" follow.
const FrontDoorPrefix = "/clusters/"

// ResponseModeHeader selects the response mode the front door asks the
// agent for: "buffered" sends the proxy_request without
// supports_response_streaming (protocol.md §6.5); anything else streams.
const ResponseModeHeader = "X-Devplane-Response-Mode"

// frontDoorPart holds the HTTP front door's state.
type frontDoorPart struct {
	fdSeq atomic.Uint64
}

// frontDoorWait is how long a request waits for the cluster's agent to be
// connected before it fails with 503.
const frontDoorWait = 10 * time.Second

// frontDoorChunk is the size of proxy_request_chunk pieces.
const frontDoorChunk = 32 << 10

// registerFrontDoor adds the front door's routes.
func (s *Server) registerFrontDoor(mux *http.ServeMux) {
	mux.HandleFunc("/clusters/{id}/{door}/", s.serveFrontDoor)
	mux.HandleFunc("/clusters/{id}/{door}", s.serveFrontDoor)
	mux.HandleFunc("GET /admin/frontdoor/kubeconfig", s.serveKubeconfig)
}

func (s *Server) nextRequestID() string {
	return "fd-" + strconv.FormatUint(s.fdSeq.Add(1), 10) + "-" + strconv.FormatInt(time.Now().UnixNano()%1e9, 36)
}

// serveFrontDoor relays one HTTP request through the cluster's agent.
func (s *Server) serveFrontDoor(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	opts, ok := parseDoor(r.PathValue("door"))
	if !ok {
		http.Error(w, fmt.Sprintf("no front door %q: use k8s, or k8s- followed by translated, v4 or v5 joined with -", r.PathValue("door")), http.StatusNotFound)
		return
	}
	wctx, cancel := context.WithTimeout(r.Context(), frontDoorWait)
	sess, err := s.WaitSession(wctx, id)
	cancel()
	if err != nil {
		http.Error(w, fmt.Sprintf("cluster %q has no connected agent (waited %s)", id, frontDoorWait), http.StatusServiceUnavailable)
		return
	}
	path := strings.TrimPrefix(r.URL.EscapedPath(), FrontDoorPrefix+id+"/"+r.PathValue("door"))
	if path == "" {
		path = "/"
	}
	if websocket.IsWebSocketUpgrade(r) {
		s.frontDoorWebSocket(w, r, sess, path, opts)
		return
	}
	s.frontDoorHTTP(w, r, sess, path)
}

// hopByHop are not forwarded in either direction.
var hopByHop = map[string]bool{
	"Connection": true, "Keep-Alive": true, "Proxy-Authenticate": true, "Proxy-Authorization": true,
	"Te": true, "Trailer": true, "Trailers": true, "Transfer-Encoding": true, "Upgrade": true,
}

func (s *Server) frontDoorHTTP(w http.ResponseWriter, r *http.Request, sess *Session, path string) {
	ctx := r.Context()
	reqID := s.nextRequestID()
	msgs, unsubscribe := sess.Subscribe(reqID)
	defer unsubscribe()
	hasBody := r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0
	streaming := !strings.EqualFold(r.Header.Get(ResponseModeHeader), "buffered")
	h := protocol.Headers{}
	for k, v := range r.Header {
		if !hopByHop[k] && k != ResponseModeHeader {
			h[k] = v
		}
	}
	pr := protocol.ProxyRequest{
		Method: r.Method, Path: path, Query: r.URL.RawQuery, Headers: h,
		UseStreaming: hasBody, SupportsStreaming: true, SupportsResponseStreaming: streaming,
	}
	if err := sess.Send(ctx, protocol.TypeProxyRequest, reqID, pr); err != nil {
		http.Error(w, "send proxy_request to the agent: "+err.Error(), http.StatusBadGateway)
		return
	}
	done := false
	defer func() {
		if !done { // client gone or session failed: tell the agent (§6.6)
			_ = sess.Send(context.Background(), protocol.TypeProxyCancel, reqID, struct{}{})
		}
	}()
	rc := http.NewResponseController(w)
	if hasBody {
		_ = rc.EnableFullDuplex() // stream the body while the response streams back
		go s.sendBody(ctx, sess, reqID, r.Body)
	}
	started := false
	fail := func(msg string) {
		if !started {
			http.Error(w, msg, http.StatusBadGateway)
			return
		}
		panic(http.ErrAbortHandler) // headers are out: abort so the client sees a broken body, not a short one
	}
	for {
		var env *protocol.Envelope
		var ok bool
		select {
		case env, ok = <-msgs:
		case <-ctx.Done():
			return
		}
		if !ok {
			fail("the agent's session ended")
			return
		}
		switch env.Type {
		case protocol.TypeProxyResponseHeader:
			var hdr protocol.ProxyResponseHeader
			_ = env.DecodePayload(&hdr)
			for k, vs := range hdr.Headers {
				if !hopByHop[http.CanonicalHeaderKey(k)] {
					w.Header()[http.CanonicalHeaderKey(k)] = vs
				}
			}
			w.WriteHeader(hdr.Status)
			started = true
			if len(msgs) == 0 { // more is queued: the next write or the end flushes
				_ = rc.Flush()
			}
		case protocol.TypeProxyResponseChunk:
			var c protocol.ProxyResponseChunk
			_ = env.DecodePayload(&c)
			b, err := base64.StdEncoding.DecodeString(c.Data)
			if err != nil {
				fail("bad chunk from the agent")
				return
			}
			if _, err := w.Write(b); err != nil {
				return
			}
			if len(msgs) == 0 {
				_ = rc.Flush()
			}
		case protocol.TypeProxyResponseEnd:
			done = true
			return
		case protocol.TypeProxyResponse: // an agent may answer buffered anyway
			done = true
			writeBuffered(w, env)
			return
		case protocol.TypeProxyResponseAbort, protocol.TypeProxyError:
			done = true
			var e protocol.ErrorPayload
			_ = env.DecodePayload(&e)
			fail("agent: " + e.Error)
			return
		}
	}
}

// sendBody streams the request body as proxy_request_chunk messages.
func (s *Server) sendBody(ctx context.Context, sess *Session, reqID string, body io.Reader) {
	buf := make([]byte, frontDoorChunk)
	for {
		n, err := body.Read(buf)
		if n > 0 {
			chunk := protocol.ProxyRequestChunk{Data: base64.StdEncoding.EncodeToString(buf[:n])}
			if sess.Send(ctx, protocol.TypeProxyRequestChunk, reqID, chunk) != nil {
				return
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				_ = sess.Send(context.Background(), protocol.TypeProxyCancel, reqID, struct{}{})
				return
			}
			_ = sess.Send(ctx, protocol.TypeProxyRequestStreamEnd, reqID, struct{}{})
			return
		}
	}
}

// writeBuffered writes a buffered proxy_response (§4.3).
func writeBuffered(w http.ResponseWriter, env *protocol.Envelope) {
	var pr protocol.ProxyResponse
	_ = env.DecodePayload(&pr)
	body, err := decodeResponseBody(pr.Body, pr.Encoding)
	if err != nil {
		http.Error(w, "bad proxy_response body from the agent: "+err.Error(), http.StatusBadGateway)
		return
	}
	for k, vs := range pr.Headers {
		if !hopByHop[http.CanonicalHeaderKey(k)] {
			w.Header()[http.CanonicalHeaderKey(k)] = vs
		}
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(pr.Status)
	_, _ = w.Write(body)
}
