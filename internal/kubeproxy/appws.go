package kubeproxy

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/gorilla/websocket"

	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
)

// startWebSocket handles a proxy_request that is a WebSocket (§6.3 rule 2):
// a Kubernetes path without service info is a kubectl relay answered at
// once with 200; anything else is an app-service relay (§6.7).
func (p *Proxy) startWebSocket(c protocol.Conn, id string, req *protocol.ProxyRequest) {
	streaming := req.SupportsResponseStreaming
	hasSvc := req.ServiceName != "" || req.Namespace != "" || req.ServicePort != 0
	dl, err := p.deadline(req, true)
	if err != nil {
		p.replyLater(c, id, streaming, err.Error())
		return
	}
	if !hasSvc && hasPrefixSegment(req.Path, "/api", "/apis") {
		s := relaySpec{id: id, method: req.Method, path: req.Path, query: req.Query, protocol: req.Protocol, headers: req.Headers, deadline: dl}
		p.startKubeRelay(c, s, func() {
			p.goSafe("relay answer", func() { answer(c, id, streaming, http.StatusOK, nil, "") })
		})
		return
	}
	path, err := cleanPath(req.Path)
	if err != nil {
		p.replyLater(c, id, streaming, err.Error())
		return
	}
	if !p.acquire() {
		p.replyLater(c, id, streaming, p.busyMessage())
		return
	}
	r := p.newRelay(c, id, true, dl)
	p.goSafe("app relay", func() {
		defer r.finish()
		ws, resp, err := p.dialApp(r.ctx, req, path)
		if err != nil {
			if r.ctx.Err() != nil {
				return
			}
			status := http.StatusBadGateway
			var he *handshakeError
			if errors.As(err, &he) {
				status = he.status
			}
			answer(c, id, streaming, status, nil, err.Error())
			r.cancel(errShutdown) // answered already; finish only sends the close
			return
		}
		h := http.Header{}
		for k, v := range resp.Header {
			h[k] = v
		}
		_ = resp.Body.Close()
		h.Set("Upgrade", "websocket")
		h.Set("Connection", "Upgrade")
		// §6.5: the 101 goes out before any relay data.
		if !answer(c, id, streaming, http.StatusSwitchingProtocols, h, "") {
			return
		}
		r.pump(ws)
	})
}

// answer sends a complete response in the request's mode; false when the
// connection is gone.
func answer(c protocol.Conn, id string, streaming bool, status int, h http.Header, body string) bool {
	headers := responseHeaders(h, status)
	if streaming {
		if c.Send(c.Context(), protocol.TypeProxyResponseHeader, id, protocol.ProxyResponseHeader{Status: status, Headers: headers}) != nil {
			return false
		}
		if body != "" {
			data := base64.StdEncoding.EncodeToString([]byte(body))
			if c.Send(c.Context(), protocol.TypeProxyResponseChunk, id, protocol.ProxyResponseChunk{Data: data, Encoding: "base64", Size: len(body)}) != nil {
				return false
			}
		}
		return c.Send(c.Context(), protocol.TypeProxyResponseEnd, id, struct{}{}) == nil
	}
	data, enc := encodeBody("text/plain", []byte(body))
	return c.Send(c.Context(), protocol.TypeProxyResponse, id, protocol.ProxyResponse{Status: status, Headers: headers, Body: data, Encoding: enc}) == nil
}

// dialApp connects to the app Service (§6.7): resolved as in §14.2 and
// dialled under the egress policy, a 10 s handshake, TLS unverified, the
// original Host kept, the control plane's Authorization not passed on.
// Compression is not offered: §6.7 allows it, and it is what let a backend
// inflate a message past the read limit.
// Without a resolvable address it goes through the API server service proxy.
func (p *Proxy) dialApp(ctx context.Context, req *protocol.ProxyRequest, path string) (*websocket.Conn, *http.Response, error) {
	var ref ServiceRef
	var ok bool
	hasSvc := req.ServiceName != "" || req.Namespace != "" || req.ServicePort != 0
	switch {
	case hasSvc:
		var err error
		if ref, err = serviceRef(req); err != nil {
			return nil, nil, err
		}
		ok = true
	case p.o.Routes != nil:
		if host := firstNonEmpty(req.Headers.Get("Host"), req.Headers.Get("X-Forwarded-Host")); host != "" {
			ref, ok = p.o.Routes.RouteFor(stripPort(host))
		}
		if !ok {
			ref, ok = p.o.Routes.Controller()
		}
	}
	if !ok {
		return nil, nil, fmt.Errorf("%w: WebSocket to %q has no Service target and no ingress controller was detected; set service_name, namespace and service_port", ErrBadRequest, path)
	}
	t, err := p.serviceTarget(ctx, req, ref, path)
	if err != nil {
		return nil, nil, err
	}
	q, err := cleanQuery(req.Query)
	if err != nil {
		return nil, nil, err
	}
	u := wsURL(t.url)
	u.RawQuery = q
	hdr := dialHeaders(req.Headers)
	var tlsConf *tls.Config
	if t.kube {
		// API server service proxy: the agent's identity, verified CA.
		kc, err := p.clients.kube(p.o.RESTConfig())
		if err != nil {
			return nil, nil, err
		}
		hdr.Del("Authorization")
		tok, err := bearerToken(kc.cfg)
		if err != nil {
			return nil, nil, err
		}
		if tok != "" {
			hdr.Set("Authorization", "Bearer "+tok)
		}
		tlsConf = kc.saTLS
	} else {
		// The control plane's credentials go to the Kubernetes API only.
		hdr.Del("Authorization")
		tlsConf = &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}} //nolint:gosec // in-cluster backends use self-signed certs (§6.7)
		if t.host != "" {
			hdr.Set("Host", t.host)
		}
		if h := req.Headers.Get("Host"); h != "" {
			hdr.Set("Host", h)
		}
	}
	if strings.EqualFold(req.Scheme, "https") {
		hdr.Set("X-Forwarded-Proto", "https")
	}
	protos := subprotocols(relaySpec{protocol: req.Protocol, headers: req.Headers})
	return dialWS(ctx, u.String(), hdr, protos, tlsConf, appHandshakeTimeout, t)
}
