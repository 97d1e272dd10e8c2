// Package controlplane owns the agent's side of protocol.md §2–5 and §8: the
// one outbound WebSocket (controller or gateway), registration and resume,
// heartbeats, reconnect with backoff and generations, and the dispatch of
// inbound messages to handlers. Handlers (the Kubernetes proxy, the yamux
// tunnel, route sync) see a connection only through protocol.Conn, which
// this package implements, and serve messages as protocol.Handler; the
// daemon wires the concrete ones.
package controlplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/config"
	"github.com/pipeops/pipeops-vm-agent/internal/health"
	"github.com/pipeops/pipeops-vm-agent/internal/logging"
	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
	"github.com/pipeops/pipeops-vm-agent/internal/state"
)

// Cluster is what the link needs from the local Kubernetes cluster. The
// daemon adapts *kube.Manager to it.
type Cluster interface {
	// Version is the API server's GitVersion. Registration waits for it
	// (protocol.md §13.24: never fabricated).
	Version(ctx context.Context) (string, error)
	// Credentials are the token and base64 PEM CA sent at registration
	// (§14.3). They must stay the same until really rotated: a change
	// triggers a new registration.
	Credentials(ctx context.Context) (token, caData string, err error)
	// Telemetry is the heartbeat's cluster figures.
	Telemetry(ctx context.Context) (Telemetry, error)
}

// CredentialsWatcher is optionally implemented by a Cluster whose
// credentials can rotate: the returned channel closes at the next change,
// and the link then registers again with cluster_id (§8.6).
type CredentialsWatcher interface {
	CredentialsChanged() <-chan struct{}
}

// Telemetry is the cluster part of heartbeat.metadata (§4.2).
type Telemetry struct {
	K8sVersion  string
	Nodes       int
	Pods        int
	CPUUsage    string // e.g. "37.5%"
	MemoryUsage string
}

// Options are a Client's dependencies.
type Options struct {
	Config  *config.Config
	AgentID string
	State   *state.Store
	Health  *health.Tracker
	Log     *slog.Logger
	// Metrics registers the pipeops_agent_controlplane_* metrics; nil skips.
	Metrics prometheus.Registerer
	Cluster Cluster
	// Locality fills register's server_ip, region, cloud_provider and
	// location metadata, and worker_join.server_url; nil uses the outbound
	// interface's address and the configured region and provider.
	Locality Locality
	// K3sTokenPath is read for heartbeat.worker_join; "" means
	// /var/lib/rancher/k3s/server/node-token.
	K3sTokenPath string
	// Protocol timings; zero means the protocol.md §2 / §8.3 values.
	PingInterval    time.Duration // 10 s
	ReadTimeout     time.Duration // 60 s
	RegisterTimeout time.Duration // 30 s
	// Jitter is the source of the backoff's jitter, in [0, 1) (tests);
	// nil is math/rand.
	Jitter func() float64
	// GatewayFallback is how long the cached gateway may fail in a row
	// before the link asks the controller for the current one; zero is 2 min.
	GatewayFallback time.Duration
	// DrainTimeout bounds the shutdown drain (OnShutdown); zero is 10 s.
	DrainTimeout time.Duration
	// Active, when set, is asked before every dial and every frame
	// written: false means this agent may not act for the cluster now (an
	// HA leader whose lease may have passed to another agent). The frame
	// is dropped and the connection closed without a close frame, so
	// nothing further goes out on it. nil: always active (single VM).
	Active func() bool
	// MayDial, when set, is asked before every dial; false refuses it with
	// ErrInactive (an HA leader holding its link through an API server
	// outage keeps the connection it has but opens none). nil: Active.
	MayDial func() bool
}

// ErrInactive ends a connection (or refuses a dial) while Options.Active
// reports false.
var ErrInactive = errors.New("this agent is no longer the active one (high availability); nothing more is sent on this connection")

// DefaultK3sTokenPath is the k3s server's node token (§4.2).
const DefaultK3sTokenPath = "/var/lib/rancher/k3s/server/node-token"

// Client is the agent's side of the control-plane link. New builds it; Run
// drives the single reconnect loop.
type Client struct {
	cfg     *config.Config
	idMu    sync.Mutex
	agentID string
	active  func() bool
	mayDial func() bool
	st      *state.Store
	health  *health.Tracker
	log     *slog.Logger
	cluster Cluster
	dialer  *websocket.Dialer
	metrics *metrics
	limiter *logging.Limiter
	k3sPath string

	locality Locality // where this VM is (locality.go)

	pingEvery, readTimeout, registerTimeout time.Duration
	jitter                                  func() float64
	gatewayFallback                         time.Duration

	// Owned by the Run goroutine.
	gwFailSince  time.Time       // first of the cached gateway's consecutive failures
	credsWait    <-chan struct{} // the CredentialsChanged waiter, until it fires
	drained      bool
	drainTimeout time.Duration
	lp           *health.Loop // the link supervisor's watch

	hmu          sync.RWMutex
	handlers     map[string]protocol.Handler
	hooks        []protocol.ConnectHook
	contributors []func(ctx context.Context, hb *protocol.Heartbeat)
	drainers     []func(ctx context.Context)

	gen atomic.Uint64

	mu         sync.Mutex
	cur        *conn
	link       apitype.LinkStatus
	k8sVersion string
	lastTel    Telemetry
}

// New builds a client. It dials nothing and starts nothing; it fails only
// on unusable TLS settings.
func New(o Options) (*Client, error) {
	if o.Config == nil || o.State == nil || o.Health == nil || o.Cluster == nil {
		return nil, errors.New("controlplane: Config, State, Health and Cluster are required")
	}
	d, err := newDialer(o.Config.PipeOps.TLS, o.Config.PipeOps.Timeout.Std())
	if err != nil {
		return nil, err
	}
	log := o.Log
	if log == nil {
		log = logging.Discard()
	}
	c := &Client{
		cfg: o.Config, agentID: o.AgentID, active: o.Active, mayDial: o.MayDial, st: o.State, health: o.Health, log: log, cluster: o.Cluster,
		dialer: d, metrics: newMetrics(o.Metrics), limiter: logging.NewLimiter(5*time.Minute, nil),
		k3sPath: o.K3sTokenPath, locality: o.Locality, handlers: map[string]protocol.Handler{},
		pingEvery: orDefault(o.PingInterval, 10*time.Second), readTimeout: orDefault(o.ReadTimeout, 60*time.Second),
		registerTimeout: orDefault(o.RegisterTimeout, 30*time.Second), jitter: o.Jitter,
		gatewayFallback: orDefault(o.GatewayFallback, 2*time.Minute), drainTimeout: orDefault(o.DrainTimeout, 10*time.Second),
		link: apitype.LinkStatus{State: apitype.LinkConnecting},
	}
	if c.k3sPath == "" {
		c.k3sPath = DefaultK3sTokenPath
	}
	c.metrics.setState(apitype.LinkConnecting)
	return c, nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// SetAgentID replaces the agent id sent from the next message on: an HA
// agent adopts the cluster's shared identity before its link starts.
func (c *Client) SetAgentID(id string) {
	c.idMu.Lock()
	defer c.idMu.Unlock()
	c.agentID = id
}

// id is the agent id to send.
func (c *Client) id() string {
	c.idMu.Lock()
	defer c.idMu.Unlock()
	return c.agentID
}

// isActive applies Options.Active.
func (c *Client) isActive() bool { return c.active == nil || c.active() }

// Register adds a handler for the types it lists. A later registration of
// the same type replaces the earlier one. Safe at any time.
func (c *Client) Register(h protocol.Handler) {
	c.hmu.Lock()
	defer c.hmu.Unlock()
	for _, t := range h.Types() {
		c.handlers[t] = h
	}
}

// OnConnect adds a hook run (in its own goroutine) after every successful
// connection, once the first heartbeat went out.
func (c *Client) OnConnect(h protocol.ConnectHook) {
	c.hmu.Lock()
	defer c.hmu.Unlock()
	c.hooks = append(c.hooks, h)
}

// OnShutdown adds a drainer run when Run's context ends, while the
// connection is still open: it should let in-flight work answer and end
// it by the time its context (the drain timeout, 10 s) ends. Drainers run
// concurrently, once; the connection then closes with 1000 (§8.7).
func (c *Client) OnShutdown(fn func(ctx context.Context)) {
	c.hmu.Lock()
	defer c.hmu.Unlock()
	c.drainers = append(c.drainers, fn)
}

// AddHeartbeatContributor adds a function that fills its part of every
// heartbeat (routes: Metadata.GatewayRoutes/IsPrivate; monitoring: the
// grafana_* fields). It runs on the heartbeat path: return quickly.
func (c *Client) AddHeartbeatContributor(fn func(ctx context.Context, hb *protocol.Heartbeat)) {
	c.hmu.Lock()
	defer c.hmu.Unlock()
	c.contributors = append(c.contributors, fn)
}

// ClusterID is the persisted cluster id ("" before the first registration).
func (c *Client) ClusterID() string { return c.st.Get().ClusterID }

// Link reports the link state for /health and whether the agent is registered.
func (c *Client) Link() (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.link.State, c.link.Registered
}

// FillStatus fills the status snapshot's link section.
func (c *Client) FillStatus(_ context.Context, st *apitype.StatusResponse) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st.Link = c.link
	if id := c.st.Get().ClusterID; id != "" {
		st.ClusterID = id
	}
}

// updateLink edits the link status under the lock and keeps the gauge in step.
func (c *Client) updateLink(fn func(l *apitype.LinkStatus)) {
	c.mu.Lock()
	fn(&c.link)
	s := c.link.State
	c.mu.Unlock()
	c.metrics.setState(s)
}

// notReady marks the control-plane condition false with reason.
func (c *Client) notReady(reason string) { c.health.Set(health.ControlPlane, false, reason) }

// current is the live connection, or nil.
func (c *Client) current() *conn {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur
}

// dial opens one connection generation. 401/403 become *AuthError.
func (c *Client) dial(ctx context.Context, mode, url string) (*conn, error) {
	if !c.isActive() || (c.mayDial != nil && !c.mayDial()) {
		return nil, ErrInactive
	}
	h := map[string][]string{"Authorization": {"Bearer " + c.cfg.PipeOps.Token.Reveal()}}
	ws, resp, err := c.dialer.DialContext(ctx, url, h)
	if err != nil {
		if resp != nil {
			resp.Body.Close()
			if resp.StatusCode == 401 || resp.StatusCode == 403 {
				return nil, &AuthError{Status: resp.StatusCode, Mode: mode}
			}
			return nil, fmt.Errorf("connect to %s %s: HTTP %d", mode, redactURL(url), resp.StatusCode)
		}
		return nil, fmt.Errorf("connect to %s %s: %w", mode, redactURL(url), err)
	}
	if ext := resp.Header.Get("Sec-WebSocket-Extensions"); ext != "" {
		// gorilla accepts an extension the server names even when the
		// dialer offered none; a compressed message would then inflate
		// past the read limit, which counts bytes on the wire.
		ws.Close()
		return nil, fmt.Errorf("connect to %s %s: the server accepted the WebSocket extension %q, which the agent did not offer; refusing the connection (a compressed message could inflate past pipeops.read_limit_bytes)", mode, redactURL(url), ext)
	}
	gen := c.gen.Add(1)
	cn := newConn(context.WithoutCancel(ctx), c, gen, mode, url, ws) // ended by close or fail, never by ctx: shutdown sends 1000 first
	cn.start(c.cfg.PipeOps.ReadLimit, c.readTimeout, c.pingEvery)
	c.mu.Lock()
	c.cur = cn
	c.mu.Unlock()
	c.log.Info("connected to control plane", logging.KeyMode, mode, logging.KeyURL, redactURL(url), logging.KeyGen, gen)
	return cn, nil
}

// metrics are the link's pipeops_agent_controlplane_* series.
type metrics struct {
	state         *prometheus.GaugeVec
	reconnects    prometheus.Counter
	registrations prometheus.Counter
	hbSent        prometheus.Counter
	hbFailed      prometheus.Counter
	malformed     prometheus.Counter
	unknown       prometheus.Counter
	panics        prometheus.Counter
	bytes         *prometheus.CounterVec
}

var linkStates = []string{apitype.LinkConnecting, apitype.LinkConnected, apitype.LinkReconnecting, apitype.LinkDisconnected}

func newMetrics(reg prometheus.Registerer) *metrics {
	const ns, sub = "pipeops_agent", "controlplane"
	m := &metrics{
		state: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "connection_state",
			Help: "1 for the control-plane link's current state (connecting, connected, reconnecting, disconnected), else 0."}, []string{"state"}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "reconnects_total",
			Help: "Reconnect attempts after a lost or failed control-plane connection."}),
		registrations: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "registrations_total",
			Help: "Successful register exchanges with the controller."}),
		hbSent: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "heartbeats_sent_total",
			Help: "Heartbeats written to the control plane."}),
		hbFailed: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "heartbeats_failed_total",
			Help: "Heartbeats that could not be sent (each one starts a reconnect)."}),
		malformed: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "malformed_messages_total",
			Help: "Inbound control-plane messages that were not valid JSON envelopes."}),
		unknown: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "unknown_messages_total",
			Help: "Inbound messages of a type no handler serves."}),
		panics: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "handler_panics_total",
			Help: "Message handlers that panicked (recovered)."}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "message_bytes_total",
			Help: "WebSocket message payload bytes by direction (in, out); control frames excluded."}, []string{"direction"}),
	}
	if reg != nil {
		reg.MustRegister(m.state, m.reconnects, m.registrations, m.hbSent, m.hbFailed, m.malformed, m.unknown, m.panics, m.bytes)
	}
	return m
}

func (m *metrics) setState(s string) {
	for _, v := range linkStates {
		x := 0.0
		if v == s {
			x = 1
		}
		m.state.WithLabelValues(v).Set(x)
	}
}
