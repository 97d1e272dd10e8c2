// Package dashboard is the agent's local live status page on the loopback
// status server: one embedded HTML file (no CDN, no build step), a
// server-sent events stream and a WebSocket carrying `status` snapshots and
// warn+ `log` lines, and a polling JSON fallback. One shared producer takes
// each snapshot once, whatever the number of viewers; a viewer that falls
// behind is dropped. It only reads the agent's own state: it is not a
// Kubernetes proxy, and the snapshot types carry no secrets.
package dashboard

import (
	"bytes"
	"context"
	"crypto/sha256"
	_ "embed" // the page
	"encoding/base64"
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/logging"
	"github.com/pipeops/pipeops-vm-agent/internal/statusserver"
)

// Options configure New. Snapshot is required; zero values take defaults.
type Options struct {
	// Snapshot returns the agent's status (daemon.Status). It must not block
	// for long: it gets SnapshotTimeout.
	Snapshot func(ctx context.Context) apitype.StatusResponse
	// Changed, when set, returns a channel closed at the next health change;
	// the producer then takes a snapshot at once (a link drop shows within ms).
	Changed func() <-chan struct{}
	// Logs, when set, supplies the recent warn+ log lines (see SetLogs).
	Logs *LogBuffer

	EnableSSE       bool
	EnableWebSocket bool
	// LoopbackOnly refuses requests whose Host is a DNS name other than
	// localhost, so a DNS-rebinding page cannot read the dashboard.
	LoopbackOnly bool

	Interval        time.Duration // snapshot period while someone watches (1 s)
	IdleInterval    time.Duration // snapshot period with no viewer (10 s)
	Keepalive       time.Duration // SSE comment / WebSocket ping period (15 s)
	WriteTimeout    time.Duration // one write to a viewer (10 s)
	SnapshotTimeout time.Duration // one Snapshot call (2 s)
	ViewerBuffer    int           // log events queued per viewer before it is dropped (64)
	MaxViewers      int           // concurrent streams (256)
	LogHistory      int           // log events kept for replay (100)

	Log        *slog.Logger
	Registerer prometheus.Registerer
	Now        func() time.Time
}

func (o *Options) defaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.Interval, time.Second)
	def(&o.IdleInterval, 10*time.Second)
	def(&o.Keepalive, 15*time.Second)
	def(&o.WriteTimeout, 10*time.Second)
	def(&o.SnapshotTimeout, 2*time.Second)
	if o.ViewerBuffer <= 0 {
		o.ViewerBuffer = 64
	}
	if o.MaxViewers <= 0 {
		o.MaxViewers = 256
	}
	if o.LogHistory <= 0 {
		o.LogHistory = 100
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// Server serves the dashboard. Build it with New, add its routes with
// Register, and run its producer with Run.
type Server struct {
	o       Options
	hub     *hub
	logs    *LogBuffer
	logSeq  uint64
	page    []byte
	csp     string
	metrics *metrics

	produceMu    sync.Mutex
	sampler      sampler
	lastProduced time.Time
}

type metrics struct {
	viewers   *prometheus.GaugeVec
	dropped   *prometheus.CounterVec
	snapshots prometheus.Counter
}

// New builds the dashboard; it starts nothing.
func New(o Options) *Server {
	o.defaults()
	s := &Server{o: o, hub: newHub(o.ViewerBuffer, o.MaxViewers, o.LogHistory, o.Now()), logs: o.Logs}
	s.page, s.csp = renderPage(o.EnableSSE, o.EnableWebSocket)
	if o.Registerer != nil {
		m := &metrics{
			viewers: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "pipeops_agent_dashboard_viewers",
				Help: "Dashboard streams open now, by transport."}, []string{"transport"}),
			dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pipeops_agent_dashboard_viewers_dropped_total",
				Help: "Dashboard viewers disconnected by the agent, by reason (slow: fell a full buffer behind)."}, []string{"reason"}),
			snapshots: prometheus.NewCounter(prometheus.CounterOpts{Name: "pipeops_agent_dashboard_snapshots_total",
				Help: "Status snapshots taken by the dashboard's shared producer."}),
		}
		for _, c := range []prometheus.Collector{m.viewers, m.dropped, m.snapshots} {
			if err := o.Registerer.Register(c); err != nil {
				o.Log.Warn("register dashboard metric", logging.KeyErr, err)
			}
		}
		s.metrics = m
	}
	s.hub.onDrop = func(reason string) {
		if s.metrics != nil {
			s.metrics.dropped.WithLabelValues(reason).Inc()
		}
	}
	return s
}

// SetLogs supplies the log buffer when it is built before the dashboard
// (the process's logger exists first). Call it before Run.
func (s *Server) SetLogs(l *LogBuffer) { s.logs = l }

// Register adds the dashboard's routes through handle (statusserver.Handle).
// A transport that is switched off is simply not routed: it answers 404.
func (s *Server) Register(handle func(pattern string, h http.Handler)) {
	guard := func(f http.HandlerFunc) http.Handler { return s.guard(f) }
	handle("GET /{$}", guard(s.servePage))
	handle("GET /dashboard", guard(s.servePage))
	handle("GET /api/status", guard(s.serveStatus))
	handle("GET /v1/status", guard(s.serveStatus))
	handle("GET /api/logs", guard(s.serveLogs))
	if s.o.EnableSSE {
		handle("GET /api/realtime/events", guard(s.serveSSE))
		handle("GET /events", guard(s.serveSSE))
	}
	if s.o.EnableWebSocket {
		handle("GET /ws", guard(s.serveWS))
	}
}

// guard applies the Host and Origin checks to every dashboard route.
func (s *Server) guard(next http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.o.LoopbackOnly && !statusserver.LoopbackHost(r.Host) {
			http.Error(w, "dashboard: unexpected Host header "+r.Host+
				"; open the dashboard as http://127.0.0.1:<port>/ or http://localhost:<port>/ (DNS-rebinding protection)", http.StatusForbidden)
			return
		}
		if !sameOrigin(r) {
			http.Error(w, "dashboard: cross-origin request refused; open the dashboard page itself", http.StatusForbidden)
			return
		}
		next(w, r)
	})
}

// sameOrigin accepts requests without an Origin header (curl, pipeopsctl)
// and browser requests whose Origin is the page's own origin (its Host).
func sameOrigin(r *http.Request) bool {
	o := r.Header.Get("Origin")
	if o == "" {
		return true
	}
	u, err := url.Parse(o)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return false
	}
	return strings.EqualFold(u.Host, r.Host)
}

func (s *Server) servePage(w http.ResponseWriter, _ *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", s.csp)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-store")
	_, _ = w.Write(s.page)
}

// serveStatus is the polling fallback: the latest snapshot, taken now when
// the last one is older than Interval.
func (s *Server) serveStatus(w http.ResponseWriter, r *http.Request) {
	ev := s.fresh(r.Context())
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	_, _ = w.Write(ev.Data)
}

// serveLogs is the polling fallback for the recent warn+ lines.
func (s *Server) serveLogs(w http.ResponseWriter, _ *http.Request) {
	evs := s.hub.recentLogs()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	buf := []byte{'['}
	for i, ev := range evs {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, `{"id":"`+ev.ID+`","line":`...)
		buf = append(buf, ev.Data...)
		buf = append(buf, '}')
	}
	_, _ = w.Write(append(buf, ']', '\n'))
}

// viewerOpened and viewerClosed keep the viewers gauge.
func (s *Server) viewerOpened(transport string) {
	if s.metrics != nil {
		s.metrics.viewers.WithLabelValues(transport).Inc()
	}
}

func (s *Server) viewerClosed(transport string, v *viewer) {
	s.hub.unsubscribe(v)
	if s.metrics != nil {
		s.metrics.viewers.WithLabelValues(transport).Dec()
	}
	if r := s.hub.closedReason(v); r != dropUnsubbed && r != dropShutdown {
		s.o.Log.Info("dashboard viewer dropped", "transport", transport, logging.KeyReason, r)
	}
}

// writeFailed drops a viewer whose write failed: a write that hit its
// deadline means the viewer stopped reading, which counts as slow.
func (s *Server) writeFailed(v *viewer, err error) {
	reason := dropUnsubbed // the viewer went away
	if errors.Is(err, os.ErrDeadlineExceeded) {
		reason = dropSlow
	}
	s.hub.drop(v, reason)
}

// subscribeError answers a refused subscription.
func subscribeError(w http.ResponseWriter, err error) {
	code := http.StatusServiceUnavailable
	if errors.Is(err, errTooMany) {
		w.Header().Set("Retry-After", "5")
	}
	http.Error(w, "dashboard: "+err.Error(), code)
}

// pageHTML is the whole dashboard: markup, style and script in one file.
//
//go:embed dashboard.html
var pageHTML []byte

// transportsMarker is replaced by the transports this agent serves.
const transportsMarker = "__TRANSPORTS__"

// renderPage fills in the transports and returns the page with a Content
// Security Policy that allows exactly its own inline script and style (by
// hash), same-origin connections, and nothing from anywhere else.
func renderPage(sse, ws bool) ([]byte, string) {
	var t []string
	if sse {
		t = append(t, "sse")
	}
	if ws {
		t = append(t, "ws")
	}
	t = append(t, "poll")
	page := bytes.Replace(pageHTML, []byte(transportsMarker), []byte(strings.Join(t, " ")), 1)
	csp := "default-src 'none'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'" +
		"; script-src " + inlineHash(page, "<script>", "</script>") +
		"; style-src " + inlineHash(page, "<style>", "</style>")
	return page, csp
}

// inlineHash is the CSP source for the one inline block between open and close.
func inlineHash(page []byte, open, close string) string {
	_, rest, ok := bytes.Cut(page, []byte(open))
	if !ok {
		return "'none'"
	}
	body, _, ok := bytes.Cut(rest, []byte(close))
	if !ok {
		return "'none'"
	}
	sum := sha256.Sum256(body)
	return "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
}
