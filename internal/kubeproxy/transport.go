package kubeproxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/rest"
)

// ErrBootstrapping is returned while the proxy identity is not ready yet.
var ErrBootstrapping = errors.New("agent is still bootstrapping its Kubernetes identity; retry")

// dialTimeout is the connect timeout toward every backend. It is the only
// fixed timeout besides the per-request deadline (§6.4): the client has no
// total timeout, so watches and follow=true logs are never cut.
const dialTimeout = 10 * time.Second

// kubeStreamWindow is the HTTP/2 receive window per stream toward the API
// server: what it may send ahead of the reader. A 1 MiB window (Go's
// default is 4 MiB) bounds what a fast API server can push ahead of a slow
// control plane, and a buffered request reserves it from the memory budget
// before it asks.
const kubeStreamWindow = 1 << 20

// kubeClients are the clients for one proxy rest.Config.
type kubeClients struct {
	cfg  *rest.Config
	base *url.URL
	// sa carries the proxy ServiceAccount's credentials; pass carries none
	// (only the CA), for requests with a control-plane Authorization (§6.3 rule 5).
	sa, pass *http.Client
	// saTLS and passTLS are for WebSocket dials (HTTP/1.1 only).
	saTLS, passTLS *tls.Config
	// saAuth is the Authorization client-go's bearer wrapper would add for
	// sa ("" when the credentials are not a static token), and userAgent
	// the User-Agent its agent wrapper would add. Setting them on the
	// request first lets both wrappers pass it through instead of cloning
	// it (the request and every header) per call.
	saAuth, userAgent string
	// what names the API server in messages.
	what string
}

// clientCache rebuilds the clients when the rest.Config changes (a new
// token after re-bootstrap arrives as a new *rest.Config).
type clientCache struct {
	mu  sync.Mutex
	cur *kubeClients

	// dial connects to Service targets under the egress policy.
	dial func(ctx context.Context, network, addr string) (net.Conn, error)

	svcOnce sync.Once
	svc     *http.Client

	viaOnce sync.Once
	via     *http.Client
	viaDial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// dialWithin bounds every connect of dial to d.
func dialWithin(dial func(ctx context.Context, network, addr string) (net.Conn, error), d time.Duration) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		ctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		return dial(ctx, network, addr)
	}
}

// ServiceDialer dials a Service port with the resolver's own fallbacks
// (svcresolve.Resolver: ClusterIP, then ready endpoints). When the
// Resolver also implements it, Service calls dial through it.
type ServiceDialer interface {
	Dial(ctx context.Context, network, namespace, name string, port int) (net.Conn, string, error)
}

// serviceHost is the connection-pool key of a Service dialed through a
// ServiceDialer; it is never looked up in DNS.
func serviceHost(ref ServiceRef, domain string) string {
	return net.JoinHostPort(ref.Name+"."+ref.Namespace+".svc."+domain, strconv.Itoa(ref.Port))
}

// dialing is the Service client whose connections come from d.
func (cc *clientCache) dialing(d ServiceDialer) *http.Client {
	cc.viaOnce.Do(func() {
		t := serviceTransport(nil)
		cc.viaDial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, port, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			parts := strings.SplitN(host, ".", 3)
			n, err := strconv.Atoi(port)
			if len(parts) < 3 || err != nil {
				return nil, fmt.Errorf("not a Service address: %s", addr)
			}
			dctx, cancel := context.WithTimeout(ctx, dialTimeout)
			defer cancel()
			c, _, err := d.Dial(dctx, network, parts[1], parts[0], n)
			return c, err
		}
		t.DialContext = cc.viaDial
		cc.via = &http.Client{Transport: t, CheckRedirect: noRedirects}
	})
	return cc.via
}

func (cc *clientCache) kube(cfg *rest.Config) (*kubeClients, error) {
	if cfg == nil {
		return nil, ErrBootstrapping
	}
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.cur != nil && (cc.cur.cfg == cfg || sameIdentity(cc.cur.cfg, cfg)) {
		return cc.cur, nil
	}
	kc, err := buildKubeClients(cfg)
	if err != nil {
		return nil, err
	}
	if cc.cur != nil {
		cc.cur.sa.CloseIdleConnections()
		cc.cur.pass.CloseIdleConnections()
	}
	cc.cur = kc
	return kc, nil
}

// sameIdentity reports whether two configs reach the same server with the
// same credentials. The kube manager hands out a fresh copy per call (the
// token may be re-minted), so pointer identity is not enough.
func sameIdentity(a, b *rest.Config) bool {
	return a.Host == b.Host && a.APIPath == b.APIPath && a.BearerToken == b.BearerToken && a.BearerTokenFile == b.BearerTokenFile &&
		a.Username == b.Username && a.Password == b.Password && a.Insecure == b.Insecure && a.ServerName == b.ServerName &&
		a.CAFile == b.CAFile && a.CertFile == b.CertFile && a.KeyFile == b.KeyFile &&
		bytes.Equal(a.CAData, b.CAData) && bytes.Equal(a.CertData, b.CertData) && bytes.Equal(a.KeyData, b.KeyData) &&
		a.ExecProvider == nil && b.ExecProvider == nil && a.AuthProvider == nil && b.AuthProvider == nil &&
		a.Transport == nil && b.Transport == nil && a.WrapTransport == nil && b.WrapTransport == nil &&
		a.Dial == nil && b.Dial == nil && a.Proxy == nil && b.Proxy == nil
}

func buildKubeClients(cfg *rest.Config) (*kubeClients, error) {
	host := cfg.Host
	if !strings.Contains(host, "://") {
		host = "https://" + host
	}
	base, err := url.Parse(host)
	if err != nil || base.Host == "" {
		return nil, fmt.Errorf("parse Kubernetes API server address %q from the agent's kubeconfig: %w", cfg.Host, err)
	}
	anon := rest.AnonymousClientConfig(cfg)
	sa, saTLS, err := clientFor(cfg)
	if err != nil {
		return nil, err
	}
	pass, passTLS, err := clientFor(anon)
	if err != nil {
		return nil, err
	}
	kc := &kubeClients{cfg: cfg, base: base, sa: sa, pass: pass, saTLS: saTLS, passTLS: passTLS,
		userAgent: cfg.UserAgent, what: "Kubernetes API server " + base.Host}
	if staticBearer(cfg) {
		kc.saAuth = "Bearer " + cfg.BearerToken
	}
	return kc, nil
}

// staticBearer reports whether cfg authenticates with BearerToken alone,
// so client-go's only credential wrapper is the static bearer one.
func staticBearer(cfg *rest.Config) bool {
	return cfg.BearerToken != "" && cfg.BearerTokenFile == "" && cfg.Username == "" && cfg.Password == "" &&
		cfg.ExecProvider == nil && cfg.AuthProvider == nil && cfg.WrapTransport == nil && cfg.Transport == nil &&
		cfg.Impersonate.UserName == "" && cfg.Impersonate.UID == "" && len(cfg.Impersonate.Groups) == 0 && len(cfg.Impersonate.Extra) == 0
}

// clientFor builds an http.Client with client-go's TLS and auth wrappers on
// a transport we control: no total timeout, a 10 s dial timeout, enough
// idle connections for bursts, HTTP/2 health pings (a dead connection fails
// a watch instead of hanging it), and no transparent decompression (the
// control plane's Accept-Encoding decides, and bodies pass through as sent).
func clientFor(cfg *rest.Config) (*http.Client, *tls.Config, error) {
	cfg = rest.CopyConfig(cfg)
	cfg.Timeout = 0
	tlsConf, err := rest.TLSConfigFor(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("build TLS config for the Kubernetes API server: %w", err)
	}
	// The transport adds "h2" to its config's NextProtos; WebSocket dials
	// need HTTP/1.1, so they get their own copy.
	var wsTLS *tls.Config
	if tlsConf != nil {
		wsTLS = tlsConf.Clone()
		wsTLS.NextProtos = []string{"http/1.1"}
	}
	proxy := cfg.Proxy
	if proxy == nil {
		proxy = http.ProxyFromEnvironment
	}
	t := &http.Transport{
		Proxy:                 proxy,
		DialContext:           (&net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       tlsConf,
		TLSHandshakeTimeout:   dialTimeout,
		MaxIdleConnsPerHost:   256,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
		ForceAttemptHTTP2:     true,
		DisableCompression:    true,
		HTTP2: &http.HTTP2Config{SendPingTimeout: 30 * time.Second, PingTimeout: 15 * time.Second,
			MaxReceiveBufferPerStream: kubeStreamWindow},
	}
	rt, err := rest.HTTPWrappersForConfig(cfg, t)
	if err != nil {
		return nil, nil, fmt.Errorf("build Kubernetes API transport: %w", err)
	}
	return &http.Client{Transport: rt, CheckRedirect: noRedirects}, wsTLS, nil
}

// bearerToken is the ServiceAccount token for WebSocket dials, which do not
// go through the RoundTripper wrappers.
func bearerToken(cfg *rest.Config) (string, error) {
	if cfg.BearerToken != "" {
		return cfg.BearerToken, nil
	}
	if cfg.BearerTokenFile != "" {
		b, err := os.ReadFile(cfg.BearerTokenFile)
		if err != nil {
			return "", fmt.Errorf("read the proxy ServiceAccount token: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	return "", nil
}

// noRedirects passes 3xx answers back to the control plane (§6.3).
func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// service is the client toward in-cluster Services at a resolved address:
// no redirects, no TLS verification (§6.3), no total timeout, no proxy, and
// every dial under the egress policy.
func (cc *clientCache) service() *http.Client {
	cc.svcOnce.Do(func() {
		cc.svc = &http.Client{Transport: serviceTransport(cc.dial), CheckRedirect: noRedirects}
	})
	return cc.svc
}

// serviceTransport is the transport toward Services; dial is replaced by
// the caller when it is nil (dialing sets its own).
func serviceTransport(dial func(ctx context.Context, network, addr string) (net.Conn, error)) *http.Transport {
	return &http.Transport{
		DialContext:           dial,
		TLSClientConfig:       &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // in-cluster backends use self-signed certs (§6.3)
		TLSHandshakeTimeout:   dialTimeout,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true,
	}
}
