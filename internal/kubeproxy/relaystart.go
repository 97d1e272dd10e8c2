package kubeproxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/gorilla/websocket"

	"github.com/pipeops/pipeops-vm-agent/internal/logging"
	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
)

// relayPrefixes are the paths a kubectl relay may reach (§6.8).
var relayPrefixes = []string{"/api", "/apis", "/version", "/healthz", "/readyz", "/livez", "/openapi"}

// defaultChannelProtocols are offered for exec/attach/portforward when the
// control plane names none (§6.8).
var defaultChannelProtocols = []string{"v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"}

const (
	kubeHandshakeTimeout = 30 * time.Second
	appHandshakeTimeout  = 10 * time.Second
)

// relaySpec is what a relay dials.
type relaySpec struct {
	id, method, path, query, protocol string
	headers                           protocol.Headers
	raw                               bool
	deadline                          time.Time // zero: 24 h from now
}

// relayPath validates a kubectl relay path: allowed prefixes only, and no
// %, \, CR, LF, ".." or "//" (§6.8, §13.28).
func relayPath(p string) error {
	if strings.ContainsAny(p, "%\\\r\n\x00") || strings.Contains(p, "..") || strings.Contains(p, "//") {
		return fmt.Errorf("%w: relay path %q contains %%, \\, \"..\", \"//\" or a control character", ErrBadRequest, p)
	}
	if !hasPrefixSegment(p, relayPrefixes...) {
		return fmt.Errorf("%w: relay path %q is not a Kubernetes API path (/api, /apis, /version, /healthz, /readyz, /livez, /openapi)", ErrBadRequest, p)
	}
	return nil
}

// startRelayMessage handles proxy_websocket_start / ws_start.
func (p *Proxy) startRelayMessage(c protocol.Conn, env *protocol.Envelope) {
	var s protocol.WebSocketStart
	if err := env.DecodePayload(&s); err != nil {
		p.goSafe("proxy_error", func() {
			_ = c.Send(c.Context(), protocol.TypeProxyError, env.RequestID, protocol.ErrorPayload{RequestID: env.RequestID, Error: err.Error()})
		})
		return
	}
	id := firstNonEmpty(s.StreamID, env.RequestID)
	if id == "" {
		p.log.Warn("ws_start without stream_id ignored")
		return
	}
	p.startKubeRelay(c, relaySpec{id: id, method: s.Method, path: s.Path, query: s.Query, protocol: s.Protocol, headers: s.Headers, raw: s.RawFrames}, nil)
}

// startKubeRelay opens a kubectl relay. answer, when set, answers the
// proxy_request that asked for it once the relay is registered.
func (p *Proxy) startKubeRelay(c protocol.Conn, s relaySpec, answer func()) {
	fail := func(msg string) {
		p.m.finished("rejected", 0)
		p.goSafe("relay error", func() {
			_ = c.Send(c.Context(), protocol.TypeProxyError, s.id, protocol.ErrorPayload{RequestID: s.id, Error: msg})
			_ = c.Send(c.Context(), protocol.TypeProxyWebSocketClose, s.id, protocol.WebSocketClose{StreamID: s.id})
		})
	}
	if err := relayPath(s.path); err != nil {
		fail(err.Error())
		return
	}
	if !p.acquire() {
		fail(p.busyMessage())
		return
	}
	if s.deadline.IsZero() {
		s.deadline = p.o.Now().Add(longLived)
	}
	r := p.newRelay(c, s.id, false, s.deadline)
	if answer != nil {
		answer()
	}
	p.goSafe("kubectl relay", func() {
		defer r.finish()
		ws, err := p.dialKube(r.ctx, s)
		if err != nil {
			if r.ctx.Err() == nil {
				r.cancel(fmt.Errorf("relay %s: %w", s.id, err))
			}
			return
		}
		r.channels = strings.HasSuffix(ws.Subprotocol(), "channel.k8s.io")
		r.translate = r.channels && !s.raw
		p.log.Debug("kubectl relay open", logging.KeyRequestID, s.id, logging.KeyPath, s.path, "subprotocol", ws.Subprotocol())
		r.pump(ws)
	})
}

// dialKube connects to the API server (§6.8): the cluster CA, and the
// control plane's Authorization or else the ServiceAccount token (§6.3 rule 5).
func (p *Proxy) dialKube(ctx context.Context, s relaySpec) (*websocket.Conn, error) {
	if down := p.kubeDown(); down != nil {
		return nil, down
	}
	kc, err := p.clients.kube(p.o.RESTConfig())
	if err != nil {
		return nil, err
	}
	q, err := cleanQuery(s.query)
	if err != nil {
		return nil, err
	}
	u := *kc.base
	u.Scheme = "wss"
	if kc.base.Scheme == "http" {
		u.Scheme = "ws"
	}
	u.Path = strings.TrimSuffix(kc.base.Path, "/") + s.path
	u.RawQuery = q
	hdr := dialHeaders(s.headers)
	tlsConf := kc.passTLS
	if hdr.Get("Authorization") == "" {
		tok, err := bearerToken(kc.cfg)
		if err != nil {
			return nil, err
		}
		if tok != "" {
			hdr.Set("Authorization", "Bearer "+tok)
		}
		tlsConf = kc.saTLS
	}
	protos := subprotocols(s)
	what := "Kubernetes API server " + kc.base.Host
	ws, _, err := dialWS(ctx, u.String(), hdr, protos, tlsConf, kubeHandshakeTimeout, &target{what: what, kube: true})
	return ws, err
}

// dialWS dials a WebSocket backend. It never offers permessage-deflate:
// a compressed message's inflated size is not what the read limit counts
// (readMessage bounds it anyway, since gorilla/websocket accepts an
// extension it did not offer).
func dialWS(ctx context.Context, rawURL string, hdr http.Header, protos []string, tlsConf *tls.Config, handshake time.Duration, t *target) (*websocket.Conn, *http.Response, error) {
	if tlsConf != nil {
		tlsConf = tlsConf.Clone()
	}
	dial := (&net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}).DialContext
	proxy := http.ProxyFromEnvironment
	if t.dial != nil {
		dial, proxy = t.dial, nil
	}
	writeBuf := 32 << 10
	if t.kube {
		writeBuf = kubeWriteBuffer // one frame per message: see kubeWriteBuffer
	}
	d := websocket.Dialer{
		Proxy:             proxy,
		NetDialContext:    dial,
		TLSClientConfig:   tlsConf,
		HandshakeTimeout:  handshake,
		Subprotocols:      protos,
		ReadBufferSize:    32 << 10,
		WriteBufferSize:   writeBuf,
		EnableCompression: false,
	}
	ws, resp, err := d.DialContext(ctx, rawURL, hdr)
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
			_ = resp.Body.Close()
			return nil, nil, &handshakeError{status: resp.StatusCode, msg: explainStatus(resp.StatusCode, body, t.what)}
		}
		return nil, nil, explainTransport(err, t)
	}
	return ws, resp, nil
}

// handshakeError is a WebSocket handshake the backend refused.
type handshakeError struct {
	status int
	msg    string
}

func (e *handshakeError) Error() string { return e.msg }

// dialHeaders copies the control plane's headers for a WebSocket dial,
// minus those the dialer sets itself and hop-by-hop ones.
func dialHeaders(in protocol.Headers) http.Header {
	hdr := http.Header{}
	for k, vs := range in {
		ck := http.CanonicalHeaderKey(k)
		if hopByHopRequest[ck] || strings.HasPrefix(ck, "Sec-Websocket-") || ck == "Host" || ck == "Content-Length" || isImpersonation(ck) {
			continue
		}
		ok := true
		for _, v := range vs {
			if strings.ContainsAny(v, "\r\n\x00") {
				ok = false
			}
		}
		if ok {
			hdr[ck] = append(hdr[ck], vs...)
		}
	}
	return hdr
}

// subprotocols come from `protocol` and Sec-WebSocket-Protocol; without
// any, exec/attach/portforward get the channel protocols (§6.8).
func subprotocols(s relaySpec) []string {
	var out []string
	seen := map[string]bool{}
	add := func(v string) {
		for _, p := range strings.Split(v, ",") {
			if p = strings.TrimSpace(p); p != "" && !seen[p] {
				seen[p] = true
				out = append(out, p)
			}
		}
	}
	add(s.protocol)
	for k, vs := range s.headers {
		if strings.EqualFold(k, "Sec-WebSocket-Protocol") {
			for _, v := range vs {
				add(v)
			}
		}
	}
	if len(out) == 0 {
		for _, seg := range strings.Split(s.path, "/") {
			if seg == "exec" || seg == "attach" || seg == "portforward" {
				return defaultChannelProtocols
			}
		}
	}
	return out
}

// relayData routes proxy_websocket_data / ws_data (§5.1).
func (p *Proxy) relayData(c protocol.Conn, env *protocol.Envelope) {
	var d protocol.WebSocketData
	if err := env.DecodePayload(&d); err != nil {
		p.log.Debug("bad relay data", logging.KeyErr, err)
		return
	}
	r := p.findRelay(c, d.StreamID, firstNonEmpty(d.RequestID, d.StreamID, env.RequestID))
	if r == nil {
		p.log.Debug("relay data for no open relay", "stream_id", d.StreamID, logging.KeyRequestID, env.RequestID)
		return
	}
	f, err := parseFrame(&d)
	if err != nil {
		r.stop(err)
		return
	}
	if f.close {
		r.closeFromCP()
		return
	}
	if r.app && len(f.data) > maxAppFrame {
		p.log.Debug("app relay frame over 1 MiB dropped", logging.KeyRequestID, r.id)
		return
	}
	r.deliver(f)
}

// relayClose handles proxy_websocket_close / ws_close.
func (p *Proxy) relayClose(c protocol.Conn, env *protocol.Envelope) {
	var d protocol.WebSocketClose
	_ = env.DecodePayload(&d)
	if r := p.findRelay(c, firstNonEmpty(d.StreamID, env.RequestID), firstNonEmpty(d.RequestID, d.StreamID, env.RequestID)); r != nil {
		r.closeFromCP()
	}
}

// findRelay: a kubectl relay by stream id first, else an app relay.
func (p *Proxy) findRelay(c protocol.Conn, streamID, appID string) *relay {
	gen := c.Generation()
	p.mu.Lock()
	defer p.mu.Unlock()
	if streamID != "" {
		if r := p.relays[callKey{gen, streamID}]; r != nil {
			return r
		}
	}
	if appID != "" {
		return p.apps[callKey{gen, appID}]
	}
	return nil
}

// wsURL turns an http(s) URL into ws(s).
func wsURL(u *url.URL) *url.URL {
	v := *u
	switch v.Scheme {
	case "https":
		v.Scheme = "wss"
	case "http":
		v.Scheme = "ws"
	}
	return &v
}
