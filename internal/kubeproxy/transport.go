package kubeproxy

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
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

// kubeClients are the clients for one proxy rest.Config.
type kubeClients struct {
	cfg  *rest.Config
	base *url.URL
	// sa carries the proxy ServiceAccount's credentials; pass carries none
	// (only the CA), for requests with a control-plane Authorization (§6.3 rule 5).
	sa, pass *http.Client
	// saTLS and passTLS are for WebSocket dials (HTTP/1.1 only).
	saTLS, passTLS *tls.Config
}

// clientCache rebuilds the clients when the rest.Config changes (a new
// token after re-bootstrap arrives as a new *rest.Config).
type clientCache struct {
	mu  sync.Mutex
	cur *kubeClients

	svcOnce sync.Once
	svc     *http.Client
}

func (cc *clientCache) kube(cfg *rest.Config) (*kubeClients, error) {
	if cfg == nil {
		return nil, ErrBootstrapping
	}
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.cur != nil && cc.cur.cfg == cfg {
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
	return &kubeClients{cfg: cfg, base: base, sa: sa, pass: pass, saTLS: saTLS, passTLS: passTLS}, nil
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
		HTTP2:                 &http.HTTP2Config{SendPingTimeout: 30 * time.Second, PingTimeout: 15 * time.Second},
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

// service is the client toward in-cluster Services: no redirects, no TLS
// verification (§6.3), no total timeout.
func (cc *clientCache) service() *http.Client {
	cc.svcOnce.Do(func() {
		t := &http.Transport{
			DialContext:           (&net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}).DialContext,
			TLSClientConfig:       &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // in-cluster backends use self-signed certs (§6.3)
			TLSHandshakeTimeout:   dialTimeout,
			MaxIdleConnsPerHost:   64,
			IdleConnTimeout:       90 * time.Second,
			ExpectContinueTimeout: time.Second,
			DisableCompression:    true,
		}
		cc.svc = &http.Client{Transport: t, CheckRedirect: noRedirects}
	})
	return cc.svc
}
