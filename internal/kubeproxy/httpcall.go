package kubeproxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/logging"
	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
)

// longLived is the deadline of WebSockets and of watch/follow/event-stream
// requests without an explicit deadline or timeout (§6.4).
const longLived = 24 * time.Hour

// binaryBodyWait bounds the wait for a body_binary frame (§6.2 mode 3).
const binaryBodyWait = 30 * time.Second

// startRequest handles proxy_request on the reader goroutine: decode,
// classify, take a slot, register, and start the backend call.
func (p *Proxy) startRequest(c protocol.Conn, env *protocol.Envelope) {
	received := env.Received
	if received.IsZero() { // not from a connection's reader (tests)
		received = p.o.Now()
	}
	id := env.RequestID
	if id == "" {
		p.log.Warn("proxy_request without request_id ignored")
		return
	}
	var req protocol.ProxyRequest
	if err := env.DecodePayload(&req); err != nil {
		p.replyLater(c, id, false, fmt.Sprintf("malformed proxy_request: %v", err))
		return
	}
	streaming := req.SupportsResponseStreaming
	if isWebSocket(&req) {
		p.startWebSocket(c, id, &req)
		return
	}
	path, err := cleanPath(req.Path)
	if err != nil {
		p.replyLater(c, id, streaming, err.Error())
		return
	}
	if req.BodyBinary && c.BinaryChannelActive() {
		p.replyLater(c, id, streaming, "body_binary is not allowed while the yamux binary channel is active; send the body inline or with use_streaming")
		return
	}
	if !p.acquire() {
		p.replyLater(c, id, streaming, p.busyMessage())
		return
	}
	ctx, cancel := context.WithCancelCause(c.Context())
	cl := &call{cancel: cancel, longLived: isLongLived(&req)}
	var body io.Reader
	var binary <-chan []byte
	var stopBinary func()
	switch {
	case req.Streamed():
		cl.body = newBodyPipe(ctx)
		body = cl.body
	case req.BodyBinary:
		// Reserved now, on the reader goroutine, so the very next binary
		// frame cannot be read by anyone else (§6.2, §13.22).
		binary, stopBinary = c.ExpectBinaryBody(id)
	default:
		b, err := req.InlineBody()
		if err != nil {
			cancel(nil)
			p.release()
			p.replyLater(c, id, streaming, err.Error())
			return
		}
		if len(b) > 0 {
			p.m.bytesIn(len(b))
			body = bytes.NewReader(b)
		}
	}
	k := callKey{c.Generation(), id}
	p.mu.Lock()
	if old := p.calls[k]; old != nil {
		old.cancel(fmt.Errorf("replaced by a new proxy_request with the same request_id"))
	}
	p.calls[k] = cl
	p.mu.Unlock()
	p.goSafe("proxy_request", func() {
		defer func() {
			cancel(errShutdown)
			if stopBinary != nil {
				stopBinary()
			}
			p.mu.Lock()
			if p.calls[k] == cl {
				delete(p.calls, k)
			}
			p.mu.Unlock()
			p.release()
		}()
		p.serveHTTP(ctx, c, id, &req, path, body, binary, received)
	})
}

// replyLater sends an error for a request that never started, off the
// reader goroutine.
func (p *Proxy) replyLater(c protocol.Conn, id string, streaming bool, msg string) {
	p.m.finished("rejected", 0)
	p.goSafe("proxy_error", func() { sendFailure(c, id, streaming, msg) })
}

// sendFailure is the failure message of the request's response mode (§6.5).
func sendFailure(c protocol.Conn, id string, streaming bool, msg string) {
	if streaming {
		_ = c.Send(c.Context(), protocol.TypeProxyResponseAbort, id, protocol.ProxyResponseAbort{Error: msg})
		return
	}
	_ = c.Send(c.Context(), protocol.TypeProxyError, id, protocol.ErrorPayload{Error: msg})
}

// deadline applies §6.4: deadline, else timeout, else 24 h for WebSockets
// and long-lived HTTP, else the default.
func (p *Proxy) deadline(req *protocol.ProxyRequest, websocket bool) (time.Time, error) {
	now := p.o.Now()
	dl, err := req.ParsedDeadline()
	if err != nil {
		return time.Time{}, fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	switch {
	case !dl.IsZero():
		return dl, nil
	case req.Timeout > 0:
		return now.Add(time.Duration(req.Timeout)), nil
	case websocket || isLongLived(req):
		return now.Add(longLived), nil
	default:
		return now.Add(p.o.DefaultTimeout), nil
	}
}

// isLongLived: watch=true|1, follow=true, a /watch/ segment, or SSE.
func isLongLived(req *protocol.ProxyRequest) bool {
	if strings.Contains(req.Path, "/watch/") || strings.Contains(strings.ToLower(req.Headers.Get("Accept")), "text/event-stream") {
		return true
	}
	if req.Query == "" {
		return false
	}
	q, err := url.ParseQuery(req.Query)
	if err != nil {
		return false
	}
	w := strings.ToLower(q.Get("watch"))
	return w == "true" || w == "1" || strings.EqualFold(q.Get("follow"), "true")
}

// serveHTTP runs one backend call and answers it.
func (p *Proxy) serveHTTP(ctx context.Context, c protocol.Conn, id string, req *protocol.ProxyRequest, path string, body io.Reader, binary <-chan []byte, received time.Time) {
	start := p.o.Now()
	out := &responder{p: p, c: c, id: id, streaming: req.SupportsResponseStreaming, ctx: ctx, received: received}
	dl, err := p.deadline(req, false)
	if err != nil {
		out.fail(err)
		return
	}
	ctx, stop := context.WithDeadlineCause(ctx, dl, errDeadline)
	defer stop()
	out.ctx, out.deadline = ctx, dl.Sub(start)
	if binary != nil {
		t := time.NewTimer(binaryBodyWait)
		select {
		case b := <-binary:
			t.Stop()
			p.m.bytesIn(len(b))
			body = bytes.NewReader(b)
		case <-ctx.Done():
			t.Stop()
			out.fail(context.Cause(ctx))
			return
		case <-t.C:
			out.fail(fmt.Errorf("the body_binary frame did not arrive within %s", binaryBodyWait))
			return
		}
	}
	t, err := p.route(ctx, req, path)
	if err == nil && t.kube || errors.Is(err, ErrBootstrapping) {
		if down := p.kubeDown(); down != nil {
			err = down // answered at once: the API server is known to be unreachable
		}
	}
	if err != nil {
		out.fail(err)
		return
	}
	out.what = t.what
	hreq, err := p.newRequest(ctx, req, t, body)
	if err != nil {
		out.fail(err)
		return
	}
	var raw *spool
	if !out.streaming {
		// Reserved before the call: the transport may hold up to one stream
		// window of the answer before anything reads it (HTTP/2 to the API
		// server; Services speak HTTP/1.1 and buffer one block at most).
		raw = newSpool(p.budget, p.o.MaxBufferedBytes)
		defer raw.free()
		first := int64(blockSize)
		if t.kube {
			first = kubeStreamWindow
		}
		if !raw.reserveFirst(ctx, first) {
			if ctx.Err() != nil {
				out.fail(context.Cause(ctx))
			} else {
				out.failBuffer(errOverBudget, 0)
			}
			return
		}
	}
	asked := p.o.Now()
	resp, err := t.client.Do(hreq)
	if err != nil {
		if t.kube && ctx.Err() == nil {
			p.kubeFailed()
		}
		out.fail(explainTransport(err, t))
		return
	}
	defer resp.Body.Close()
	answered := p.o.Now()
	out.backend = answered.Sub(asked)
	p.m.latency(answered.Sub(start))
	p.log.Debug("proxied", logging.KeyRequestID, id, "method", hreq.Method, logging.KeyPath, path, "status", resp.StatusCode)
	if out.streaming {
		out.stream(resp)
	} else {
		out.buffer(resp, raw)
	}
}

// newRequest builds the backend request: method, re-encoded query, the
// control plane's headers minus hop-by-hop ones, Host kept, and
// X-Forwarded-Proto for https (§6.4).
func (p *Proxy) newRequest(ctx context.Context, req *protocol.ProxyRequest, t *target, body io.Reader) (*http.Request, error) {
	q, err := cleanQuery(req.Query)
	if err != nil {
		return nil, err
	}
	u := *t.url
	u.RawQuery = q
	method := strings.ToUpper(req.Method)
	if method == "" {
		method = http.MethodGet
	}
	hreq, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	if body == nil {
		hreq.Body = nil
	}
	h := make(http.Header, len(req.Headers)+3)
	drop := connectionTokens(req.Headers)
	for k, vs := range req.Headers {
		ck := http.CanonicalHeaderKey(k)
		if hopByHopRequest[ck] || drop[ck] || isImpersonation(ck) {
			continue
		}
		switch ck {
		case "Host":
			if !t.kube && len(vs) > 0 {
				hreq.Host = vs[0]
			}
			continue
		case "Content-Length":
			if n, err := strconv.ParseInt(firstNonEmpty(vs...), 10, 64); err == nil && n >= 0 && body != nil {
				hreq.ContentLength = n
			}
			continue
		case "Authorization":
			if t.dropAuth || !t.kube {
				continue // the control plane's credentials go to the Kubernetes API only
			}
		}
		for _, v := range vs {
			if strings.ContainsAny(v, "\r\n\x00") {
				return nil, fmt.Errorf("%w: header %s contains a control character", ErrBadRequest, ck)
			}
		}
		h[ck] = append(h[ck], vs...)
	}
	if t.host != "" && hreq.Host == "" {
		hreq.Host = t.host
	}
	if strings.EqualFold(req.Scheme, "https") {
		h.Set("X-Forwarded-Proto", "https")
	}
	if t.auth != "" && h.Get("Authorization") == "" {
		h["Authorization"] = []string{t.auth}
	}
	if t.userAgent != "" && h.Get("User-Agent") == "" {
		h["User-Agent"] = []string{t.userAgent}
	}
	hreq.Header = h
	return hreq, nil
}

// hopByHopRequest are dropped from proxied requests (§6.4 SHOULD).
var hopByHopRequest = map[string]bool{
	"Connection": true, "Keep-Alive": true, "Proxy-Authenticate": true, "Proxy-Authorization": true,
	"Te": true, "Trailer": true, "Trailers": true, "Transfer-Encoding": true, "Upgrade": true, "Proxy-Connection": true,
}

// isImpersonation reports whether a (canonical) header asks the API server
// to act as another identity. The control plane's requests run as its own
// Authorization or the agent's ServiceAccount, never as someone else, so
// these headers are dropped on every path.
func isImpersonation(ck string) bool {
	return strings.HasPrefix(ck, "Impersonate-")
}

// connectionTokens are the extra hop-by-hop headers a Connection header names.
func connectionTokens(h protocol.Headers) map[string]bool {
	var out map[string]bool
	for k, vs := range h {
		if !strings.EqualFold(k, "Connection") {
			continue
		}
		for _, v := range vs {
			for _, tok := range strings.Split(v, ",") {
				if tok = strings.TrimSpace(tok); tok != "" {
					if out == nil {
						out = map[string]bool{}
					}
					out[http.CanonicalHeaderKey(tok)] = true
				}
			}
		}
	}
	return out
}

// errorsIsQuiet reports whether a call ended because the control plane
// cancelled it or its connection ended; nothing more is sent then (§6.6).
func errorsIsQuiet(c protocol.Conn, ctx context.Context) bool {
	if c.Context().Err() != nil {
		return true
	}
	return errors.Is(context.Cause(ctx), errCancelled)
}
