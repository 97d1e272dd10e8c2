package routesync

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics count the REST attempts. protocol.md §11 names the reference's
// gateway_route_sync_* metrics; ours carry the agent's pipeops_agent_ prefix
// like every other agent metric.
type metrics struct {
	attempts, failures *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pipeops_agent_gateway_route_sync_attempts_total",
			Help: "Route registration REST attempts (register, sync, unregister), each HTTP try counted.",
		}, []string{"operation"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pipeops_agent_gateway_route_sync_failures_total",
			Help: "Route registration REST attempts that did not get HTTP 200.",
		}, []string{"operation"}),
	}
	// Every series exists from the start (at 0), so a scrape before the
	// first sync already shows them and rate() has a baseline.
	for _, op := range []string{OpRegister, OpSync, OpUnregister} {
		m.attempts.WithLabelValues(op)
		m.failures.WithLabelValues(op)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.attempts, m.failures} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register route sync metrics: %w", err)
			}
		}
	}
	return m, nil
}

// attempt counts one REST attempt (Client.OnAttempt).
func (m *metrics) attempt(op string, err error) {
	m.attempts.WithLabelValues(op).Inc()
	if err != nil {
		m.failures.WithLabelValues(op).Inc()
	}
}

// newHTTPClient is the REST client's transport: through HTTPS_PROXY like the
// link, with tc (the link's trust, client certificate and pins; nil: the
// system roots), bounded dials and handshakes, and few idle connections,
// since the calls come in bursts hours apart.
func newHTTPClient(tc *tls.Config) *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:     tc.Clone(), // HTTP/2 setup edits it (NextProtos): never the caller's
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConnsPerHost: 2,
		IdleConnTimeout:     90 * time.Second,
		ForceAttemptHTTP2:   true,
	}}
}
