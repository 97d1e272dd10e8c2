// Package tunnel is the agent's side of protocol.md §7: after the gateway's
// `gateway_hello` it answers `gateway_hello_ack` and runs a yamux client over
// the binary frames of the shared control-plane WebSocket (FrameConn). The
// gateway opens every stream; each starts with a stream header naming a
// target, which is either a named forward from the configuration or a
// Kubernetes Service resolved through the API (§14.2), dialled under the
// egress policy by the ServiceDialer (svcresolve). Anything else is
// refused: the control plane never reaches arbitrary host addresses. Named
// forwards are the operator's explicit choice and dial directly.
//
// Bounds: a cap on concurrent streams, a global memory budget for receive
// windows, an inactivity timeout per stream and a deadline for the header.
package tunnel

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/health"
	"github.com/pipeops/pipeops-vm-agent/internal/logging"
)

// Defaults (protocol.md §7.1, issue 6).
const (
	DefaultStreamWindow      = 8 << 20
	DefaultMaxStreams        = 1024
	DefaultMemoryBudget      = 128 << 20
	DefaultInactivityTimeout = 5 * time.Minute
	DefaultTimeout           = 30 * time.Second // keepalive, write timeout, dial timeout
	acceptBacklog            = 256
	minWindow                = 256 << 10 // yamux's initial window
	drainTimeout             = 30 * time.Second
	flushGrace               = time.Second
)

// Config bounds the tunnel. Zero values take the defaults.
type Config struct {
	StreamWindow      int           // receive window per stream, bytes (auto-tuned up to this)
	MaxStreams        int           // concurrent streams per session; more are reset
	MemoryBudget      int64         // receive-window bytes across all streams
	InactivityTimeout time.Duration // a stream with no traffic either way for this long is closed
	HeaderTimeout     time.Duration // a stream must deliver its header within this
	Forwards          map[string]string
	// Health watches the accept loop for the watchdog; nil: not watched.
	Health *health.Tracker
}

func (c Config) withDefaults() Config {
	if c.StreamWindow < minWindow {
		if c.StreamWindow == 0 {
			c.StreamWindow = DefaultStreamWindow
		} else {
			c.StreamWindow = minWindow
		}
	}
	if c.MaxStreams <= 0 {
		c.MaxStreams = DefaultMaxStreams
	}
	if c.MemoryBudget <= 0 {
		c.MemoryBudget = DefaultMemoryBudget
	}
	if c.InactivityTimeout <= 0 {
		c.InactivityTimeout = DefaultInactivityTimeout
	}
	if c.HeaderTimeout <= 0 {
		c.HeaderTimeout = DefaultTimeout
	}
	return c
}

// ServiceDialer reaches Kubernetes Services (svcresolve.Resolver).
type ServiceDialer interface {
	Dial(ctx context.Context, network, namespace, name string, port int) (net.Conn, string, error)
}

// forward is one named target: a host address, or a Service.
type forward struct {
	addr          string // host:port, for configured forwards
	ns, svc       string // a Service, for SetServiceForward
	port          int
	fromConfigure bool
}

func (f forward) describe() string {
	if f.addr != "" {
		return f.addr
	}
	return f.svc + "." + f.ns + ":" + strconv.Itoa(f.port)
}

// Manager serves gateway_hello on every control-plane connection and the
// streams of the resulting yamux sessions.
type Manager struct {
	cfg    Config
	dialer ServiceDialer
	log    *slog.Logger
	budget *budget
	m      *metrics

	mu       sync.Mutex
	forwards map[string]forward
	cur      *session
	stopped  bool
	streams  sync.WaitGroup
	sessions sync.WaitGroup // runSession goroutines
}

// New builds a Manager. dialer may be nil (Services are then refused). It
// starts nothing.
func New(cfg Config, dialer ServiceDialer, reg prometheus.Registerer, log *slog.Logger) *Manager {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg = cfg.withDefaults()
	b := newBudget(cfg.MemoryBudget)
	m := &Manager{cfg: cfg, dialer: dialer, log: log, budget: b, m: newMetrics(reg, b), forwards: map[string]forward{}}
	for name, addr := range cfg.Forwards {
		m.forwards[name] = forward{addr: addr, fromConfigure: true}
	}
	return m
}

// SetServiceForward adds (or replaces) the forward `name`, which reaches
// Service port `port` of namespace/service (e.g. grafana, prometheus, loki
// installed by the monitoring stack). A configured forward of the same name wins.
func (m *Manager) SetServiceForward(name, namespace, service string, port int) {
	if m == nil { // tunnel disabled
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if f, ok := m.forwards[name]; ok && f.fromConfigure {
		m.log.Info("tunnel forward already configured; keeping the configured address", "forward", name, logging.KeyAddr, f.addr)
		return
	}
	m.forwards[name] = forward{ns: namespace, svc: service, port: port}
}

// RemoveServiceForward removes a forward SetServiceForward added (the
// monitoring stack was uninstalled). Configured forwards stay.
func (m *Manager) RemoveServiceForward(name string) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if f, ok := m.forwards[name]; ok && !f.fromConfigure {
		delete(m.forwards, name)
	}
}

// Forwards lists the named forwards, sorted by name.
func (m *Manager) Forwards() []apitype.Forward {
	if m == nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]apitype.Forward, 0, len(m.forwards))
	for name, f := range m.forwards {
		out = append(out, apitype.Forward{Name: name, LocalAddr: f.describe()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Status is the tunnel section of `pipeopsctl status`.
func (m *Manager) Status() apitype.TunnelStatus {
	m.mu.Lock()
	active := m.cur != nil && !m.cur.ys.IsClosed()
	m.mu.Unlock()
	return apitype.TunnelStatus{
		Active:        active,
		Forwards:      m.Forwards(),
		ActiveStreams: int(m.m.nActive.Load()),
		StreamsTotal:  m.m.nTotal.Load(),
		BytesIn:       m.m.nIn.Load(),
		BytesOut:      m.m.nOut.Load(),
		Errors:        m.m.nErrors.Load(),
	}
}

// Run blocks until ctx ends. Then it refuses new streams, waits up to 30 s
// for active streams (§7.3 Close) and closes the session. It returns nil.
func (m *Manager) Run(ctx context.Context) error {
	<-ctx.Done()
	m.mu.Lock()
	m.stopped = true
	cur := m.cur
	m.mu.Unlock()
	// Session goroutines end with their connection, which the link closes
	// at shutdown; Run returns only after them (every goroutine has an owner).
	defer m.sessions.Wait()
	if cur == nil {
		return nil
	}
	_ = cur.ys.GoAway()
	done := make(chan struct{})
	go func() { m.streams.Wait(); close(done) }()
	select {
	case <-done:
		// The last streams' FINs may still be queued in yamux, which does
		// not flush on Close: give them a moment unless the connection
		// goes first (it does as soon as the control-plane link stops).
		select {
		case <-time.After(flushGrace):
		case <-cur.ys.CloseChan():
		}
	case <-time.After(drainTimeout):
		m.log.Warn("tunnel streams still active after 30s; closing the session")
	case <-cur.ys.CloseChan():
	}
	_ = cur.ys.Close()
	return nil
}

// dial connects to the stream's target, or refuses it.
func (m *Manager) dial(ctx context.Context, network string, h Header) (net.Conn, string, error) {
	if h.Namespace == "" {
		m.mu.Lock()
		f, ok := m.forwards[h.Name]
		m.mu.Unlock()
		if !ok {
			return nil, "", fmt.Errorf("%w: %q is not a configured forward (tunnel.forwards)", errRefused, h.Name)
		}
		if f.addr == "" {
			return m.dialService(ctx, network, f.ns, f.svc, f.port)
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, network, f.addr)
		return c, f.addr, err
	}
	if !isDNSLabel(h.Name) || !isDNSLabel(h.Namespace) || h.Port == 0 {
		return nil, "", fmt.Errorf("%w: %q/%q port %d is not a Service name", errRefused, h.Namespace, h.Name, h.Port)
	}
	return m.dialService(ctx, network, h.Namespace, h.Name, int(h.Port))
}

func (m *Manager) dialService(ctx context.Context, network, ns, name string, port int) (net.Conn, string, error) {
	if m.dialer == nil {
		return nil, "", fmt.Errorf("%w: Service %s/%s: no Kubernetes access", errRefused, ns, name)
	}
	return m.dialer.Dial(ctx, network, ns, name, port)
}

// isDNSLabel reports whether s is an RFC 1123 label: what Service and
// namespace names are. Dots, colons and slashes never pass, so no header can
// name a host address.
func isDNSLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		if !alnum && (c != '-' || i == 0 || i == len(s)-1) {
			return false
		}
	}
	return true
}
