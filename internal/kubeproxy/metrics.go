package kubeproxy

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
)

// latencyWindow is how many recent latencies the status percentiles use.
const latencyWindow = 1024

// metrics are the pipeops_agent_proxy_* series plus the counters behind
// the status snapshot.
type metrics struct {
	requests *prometheus.CounterVec
	inflight prometheus.Gauge
	bytes    *prometheus.CounterVec
	hist     prometheus.Histogram
	own      prometheus.Histogram
	relayG   prometheus.Gauge
	buffered prometheus.GaugeFunc

	nReq, nErr, nIn, nOut atomic.Int64
	nInflight, nRelays    atomic.Int64

	mu   sync.Mutex
	ring []float64 // seconds, newest at pos-1
	pos  int
}

func newMetrics(reg prometheus.Registerer, budget *memBudget) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pipeops_agent_proxy_requests_total",
			Help: "Proxied requests by outcome: the backend's status class (2xx…5xx), error, cancelled or rejected.",
		}, []string{"code_class"}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pipeops_agent_proxy_in_flight",
			Help: "Proxied requests and WebSocket relays in flight.",
		}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pipeops_agent_proxy_bytes_total",
			Help: "Body bytes proxied: in = control plane to backend, out = backend to control plane.",
		}, []string{"direction"}),
		hist: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "pipeops_agent_proxy_request_duration_seconds",
			Help:    "Time from proxy_request to the backend's response headers.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
		own: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "pipeops_agent_proxy_agent_seconds",
			Help:    "Time the agent itself spent on a proxied request that was answered: from reading the proxy_request off the connection to handing its last response message to the connection's writer, less the wait for the backend's response headers.",
			Buckets: []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1},
		}),
		relayG: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pipeops_agent_proxy_websocket_relays",
			Help: "Open WebSocket relays (kubectl exec/attach/port-forward and app services).",
		}),
		buffered: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "pipeops_agent_proxy_buffered_bytes",
			Help: "Bytes of buffered responses reserved from proxy.memory_budget_bytes now.",
		}, func() float64 { return float64(budget.used.Load()) }),
		ring: make([]float64, 0, latencyWindow),
	}
	// Every series exists from the start (at 0), so a scrape before the
	// first request already shows them and rate() has a baseline.
	for _, class := range []string{"2xx", "3xx", "4xx", "5xx", "error", "cancelled", "rejected"} {
		m.requests.WithLabelValues(class)
	}
	m.bytes.WithLabelValues("in")
	m.bytes.WithLabelValues("out")
	if reg != nil {
		for _, c := range []prometheus.Collector{m.requests, m.inflight, m.bytes, m.hist, m.own, m.relayG, m.buffered} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register proxy metrics: %w", err)
			}
		}
	}
	return m, nil
}

func (m *metrics) inFlight(d int) {
	m.nInflight.Add(int64(d))
	m.inflight.Add(float64(d))
}

func (m *metrics) relays(d int) {
	m.nRelays.Add(int64(d))
	m.relayG.Add(float64(d))
}

// finished counts one request by outcome.
func (m *metrics) finished(class string, _ int) {
	m.nReq.Add(1)
	switch class {
	case "error", "rejected", "5xx":
		m.nErr.Add(1)
	}
	m.requests.WithLabelValues(class).Inc()
}

func (m *metrics) bytesIn(n int) {
	m.nIn.Add(int64(n))
	m.bytes.WithLabelValues("in").Add(float64(n))
}

func (m *metrics) bytesOut(n int) {
	m.nOut.Add(int64(n))
	m.bytes.WithLabelValues("out").Add(float64(n))
}

func (m *metrics) latency(d time.Duration) {
	s := d.Seconds()
	m.hist.Observe(s)
	m.mu.Lock()
	if len(m.ring) < latencyWindow {
		m.ring = append(m.ring, s)
	} else {
		m.ring[m.pos] = s
	}
	m.pos = (m.pos + 1) % latencyWindow
	m.mu.Unlock()
}

// Status is the proxy's section of the status snapshot.
func (p *Proxy) Status() apitype.ProxyStatus {
	m := p.m
	m.mu.Lock()
	lat := slices.Clone(m.ring)
	m.mu.Unlock()
	slices.Sort(lat)
	return apitype.ProxyStatus{
		InFlight:        int(m.nInflight.Load()),
		Requests:        m.nReq.Load(),
		Errors:          m.nErr.Load(),
		BytesIn:         m.nIn.Load(),
		BytesOut:        m.nOut.Load(),
		LatencyP50Ms:    percentile(lat, 0.50) * 1000,
		LatencyP99Ms:    percentile(lat, 0.99) * 1000,
		WebSocketRelays: int(m.nRelays.Load()),
	}
}

func percentile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q * float64(len(sorted)-1))
	return sorted[i]
}
