package tunnel

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Error types of pipeops_agent_yamux_stream_errors_total (protocol.md §7.3).
const (
	errDial   = "dial_error"   // target refused, not allowed, or unreachable
	errHeader = "header_error" // short, truncated or oversized stream header
	errCopy   = "copy_error"   // a copy failed before both sides closed
)

// metrics are the reference agent's yamux metrics (names kept, §7.3), plus
// counters mirrored for the status snapshot.
type metrics struct {
	accepted prometheus.Counter
	duration prometheus.Histogram
	bytes    *prometheus.CounterVec
	active   prometheus.Gauge
	errors   *prometheus.CounterVec
	budget   prometheus.GaugeFunc

	bytesIn, bytesOut  prometheus.Counter
	nActive, nTotal    atomic.Int64
	nIn, nOut, nErrors atomic.Int64
}

func newMetrics(reg prometheus.Registerer, b *budget) *metrics {
	m := &metrics{
		accepted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pipeops_agent_yamux_streams_accepted_total", Help: "Total yamux streams accepted from gateway"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "pipeops_agent_yamux_stream_duration_seconds", Help: "Duration of yamux tunnel streams",
			Buckets: prometheus.ExponentialBuckets(0.1, 2, 15)}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pipeops_agent_yamux_bytes_total", Help: "Bytes transferred through yamux (in: gateway to target, out: target to gateway)"},
			[]string{"direction"}),
		active: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pipeops_agent_yamux_active_streams", Help: "Number of currently active yamux streams"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pipeops_agent_yamux_stream_errors_total", Help: "Total errors in yamux stream handling"},
			[]string{"type"}),
		budget: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "pipeops_agent_yamux_window_bytes", Help: "Receive-window bytes reserved from the tunnel memory budget"},
			func() float64 { return float64(b.used.Load()) }),
	}
	m.bytesIn, m.bytesOut = m.bytes.WithLabelValues("in"), m.bytes.WithLabelValues("out")
	for _, t := range []string{errDial, errHeader, errCopy} {
		m.errors.WithLabelValues(t)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.accepted, m.duration, m.bytes, m.active, m.errors, m.budget} {
			_ = reg.Register(c) // a second manager in one process (tests) keeps the first's collectors
		}
	}
	return m
}

func (m *metrics) streamStarted() {
	m.accepted.Inc()
	m.active.Inc()
	m.nActive.Add(1)
	m.nTotal.Add(1)
}

func (m *metrics) streamEnded(seconds float64) {
	m.active.Dec()
	m.nActive.Add(-1)
	m.duration.Observe(seconds)
}

func (m *metrics) error(typ string) {
	m.errors.WithLabelValues(typ).Inc()
	m.nErrors.Add(1)
}

func (m *metrics) in(n int) {
	if n > 0 {
		m.bytesIn.Add(float64(n))
		m.nIn.Add(int64(n))
	}
}

func (m *metrics) out(n int) {
	if n > 0 {
		m.bytesOut.Add(float64(n))
		m.nOut.Add(int64(n))
	}
}
