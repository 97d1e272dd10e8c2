package kubeproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/logging"
	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
)

// ErrBadRequest marks a proxy_request the agent refuses to forward.
var ErrBadRequest = errors.New("invalid proxy request")

// target is where one HTTP call goes.
type target struct {
	url    *url.URL
	client *http.Client
	host   string // Host header to send; "" uses the URL's host
	what   string // names the backend in messages
	kube   bool   // the Kubernetes API server
	// dial connects to a Service target (the egress policy applies); nil
	// for the API server, which is dialled directly and may use a proxy.
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// dropAuth removes the control plane's Authorization (the API server
	// service proxy authenticates with the agent's own identity).
	dropAuth bool
	// auth and userAgent are set on a request that has none, exactly as
	// client's wrappers would (see kubeClients.saAuth).
	auth, userAgent string
}

// resolveTimeout bounds a Service lookup (the resolver waits for its first
// cache sync); past it the API server service proxy is used.
const resolveTimeout = 5 * time.Second

var serviceName = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// kubePrefixes are the Kubernetes-like paths of §6.3 rule 4.
var kubePrefixes = []string{"/api", "/apis", "/healthz", "/readyz", "/livez", "/version", "/openapi"}

func hasPrefixSegment(p string, prefixes ...string) bool {
	for _, pre := range prefixes {
		if p == pre || strings.HasPrefix(p, pre+"/") {
			return true
		}
	}
	return false
}

// cleanPath validates a request path (§6.3 rule 3, §13.28) and returns it
// unescaped along with the raw form.
func cleanPath(raw string) (string, error) {
	if raw == "" {
		raw = "/"
	}
	if !strings.HasPrefix(raw, "/") || strings.HasPrefix(raw, "//") || strings.Contains(raw, "://") {
		return "", fmt.Errorf("%w: path %q must be an absolute path, not a URL", ErrBadRequest, raw)
	}
	if strings.ContainsAny(raw, "\r\n\x00") {
		return "", fmt.Errorf("%w: path contains a control character", ErrBadRequest)
	}
	dec, err := url.PathUnescape(raw)
	if err != nil {
		return "", fmt.Errorf("%w: path %q is not validly escaped", ErrBadRequest, raw)
	}
	if strings.Contains(dec, "..") || strings.ContainsAny(dec, "\r\n\x00") || strings.Contains(dec, "://") {
		return "", fmt.Errorf("%w: path %q contains \"..\", \"://\" or a control character", ErrBadRequest, raw)
	}
	return dec, nil
}

// cleanQuery re-encodes the raw query (§6.1).
func cleanQuery(raw string) (string, error) {
	if raw == "" {
		return "", nil
	}
	if strings.ContainsAny(raw, "\r\n\x00") {
		return "", fmt.Errorf("%w: query contains a control character", ErrBadRequest)
	}
	q, err := url.ParseQuery(raw)
	if err != nil {
		return "", fmt.Errorf("%w: query %q: %w", ErrBadRequest, raw, err)
	}
	return q.Encode(), nil
}

// route applies §6.3 rules 1, 3, 4 and 5 to a plain HTTP request.
func (p *Proxy) route(ctx context.Context, req *protocol.ProxyRequest, path string) (*target, error) {
	hasSvc := req.ServiceName != "" || req.Namespace != "" || req.ServicePort != 0
	if !hasSvc && p.o.Routes != nil {
		host := firstNonEmpty(req.Headers.Get("Host"), req.Headers.Get("X-Forwarded-Host"))
		if host != "" {
			if ref, ok := p.o.Routes.RouteFor(stripPort(host)); ok {
				return p.serviceTarget(ctx, req, ref, path)
			}
		}
	}
	if hasSvc {
		ref, err := serviceRef(req)
		if err != nil {
			return nil, err
		}
		return p.serviceTarget(ctx, req, ref, path)
	}
	if !hasPrefixSegment(path, kubePrefixes...) {
		if p.o.Routes != nil {
			if ref, ok := p.o.Routes.Controller(); ok {
				return p.serviceTarget(ctx, req, ref, path)
			}
		}
		return nil, fmt.Errorf("%w: path %q is not a Kubernetes API path and no ingress controller was detected to serve it; set service_name, namespace and service_port", ErrBadRequest, path)
	}
	return p.kubeTarget(req, path)
}

func serviceRef(req *protocol.ProxyRequest) (ServiceRef, error) {
	ref := ServiceRef{Namespace: req.Namespace, Name: req.ServiceName, Port: int(req.ServicePort)}
	if !serviceName.MatchString(ref.Name) || !serviceName.MatchString(ref.Namespace) {
		return ref, fmt.Errorf("%w: service_name %q and namespace %q must both be set and use only [a-z0-9-]", ErrBadRequest, ref.Name, ref.Namespace)
	}
	if ref.Port < 1 || ref.Port > 65535 {
		return ref, fmt.Errorf("%w: service_port %d must be 1-65535", ErrBadRequest, ref.Port)
	}
	return ref, nil
}

// kubeTarget is rule 5: the API server, with the control plane's
// Authorization passed through verbatim, else the ServiceAccount token.
func (p *Proxy) kubeTarget(req *protocol.ProxyRequest, path string) (*target, error) {
	kc, err := p.clients.kube(p.o.RESTConfig())
	if err != nil {
		return nil, err
	}
	u := *kc.base
	setPath(&u, strings.TrimSuffix(kc.base.Path, "/"), path, req.Path)
	t := &target{url: &u, client: kc.sa, what: kc.what, kube: true, auth: kc.saAuth, userAgent: kc.userAgent}
	if req.Headers.Get("Authorization") != "" {
		t.client, t.auth = kc.pass, ""
	}
	return t, nil
}

// serviceTarget is rule 3 (§14.2): the resolved address, else the API
// server's service proxy.
func (p *Proxy) serviceTarget(ctx context.Context, req *protocol.ProxyRequest, ref ServiceRef, path string) (*target, error) {
	scheme := "http"
	if strings.EqualFold(req.Scheme, "https") {
		scheme = "https"
	}
	name := fmt.Sprintf("service %s/%s:%d", ref.Namespace, ref.Name, ref.Port)
	if p.o.Resolver != nil {
		rctx, cancel := context.WithTimeout(ctx, resolveTimeout)
		hostport, err := p.o.Resolver.Resolve(rctx, ref.Namespace, ref.Name, ref.Port)
		cancel()
		if err == nil {
			host := req.Headers.Get("Host")
			if host == "" {
				host = fmt.Sprintf("%s.%s.svc.%s", ref.Name, ref.Namespace, p.o.ClusterDomain)
				if ref.Port != 80 && ref.Port != 443 {
					host += ":" + strconv.Itoa(ref.Port)
				}
			}
			u := &url.URL{Scheme: scheme, Host: hostport}
			t := &target{url: u, client: p.clients.service(), host: host, what: name + " (" + hostport + ")", dial: p.clients.dial}
			if d, ok := p.o.Resolver.(ServiceDialer); ok {
				u.Host, t.client = serviceHost(ref, p.o.ClusterDomain), p.clients.dialing(d)
				t.dial = p.clients.viaDial
			}
			setPath(u, "", path, req.Path)
			return t, nil
		}
		p.log.Debug("service not resolved; using the API server service proxy", logging.KeyService, name, logging.KeyErr, err)
	}
	kc, err := p.clients.kube(p.o.RESTConfig())
	if err != nil {
		return nil, err
	}
	u := *kc.base
	setPath(&u, strings.TrimSuffix(kc.base.Path, "/")+
		fmt.Sprintf("/api/v1/namespaces/%s/services/%s:%s:%d/proxy", ref.Namespace, scheme, ref.Name, ref.Port), path, req.Path)
	return &target{url: &u, client: kc.sa, what: name + " through the API server service proxy", kube: true, dropAuth: true}, nil
}

// setPath joins prefix and the request path, keeping the request's own
// escaping (an escaped "/" inside a name must stay escaped).
func setPath(u *url.URL, prefix, decoded, raw string) {
	if raw == "" {
		raw = "/"
	}
	u.Path = prefix + decoded
	u.RawPath = prefix + raw
}

// isWebSocket applies §6.3 rule 2's detection.
func isWebSocket(req *protocol.ProxyRequest) bool {
	if req.WebSocketFlag() || strings.EqualFold(req.Headers.Get("Upgrade"), "websocket") {
		return true
	}
	for k := range req.Headers {
		switch strings.ToLower(k) {
		case "sec-websocket-key", "sec-websocket-version", "sec-websocket-protocol":
			return true
		}
	}
	return false
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

func stripPort(host string) string {
	if i := strings.LastIndexByte(host, ':'); i > 0 && !strings.Contains(host[i:], "]") {
		return host[:i]
	}
	return host
}
