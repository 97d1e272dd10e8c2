// Package kubeproxy serves the control plane's proxy traffic on the agent
// (protocol.md §6): `proxy_request` to the Kubernetes API or to a cluster
// Service, with every request-body and response mode, deadlines and
// cancellation, and the kubectl exec/attach/port-forward WebSocket relay
// (§6.8) plus the app-service WebSocket relay (§6.7). It implements
// protocol.Handler; only the daemon wires it. Backends are reached only
// through the proxy ServiceAccount's rest.Config (client-go's transport) or a
// Service resolved through the Kubernetes API, never an arbitrary host, and
// a Service target is dialled only under the egress policy (never this
// host's loopback, link-local or own addresses). The control plane's
// Authorization goes to the Kubernetes API only; Impersonate-* headers are
// dropped everywhere. Buffered responses share one memory budget.
package kubeproxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/rest"

	"github.com/pipeops/pipeops-vm-agent/internal/egress"
	"github.com/pipeops/pipeops-vm-agent/internal/logging"
	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
)

// ServiceResolver turns a Service (namespace/name and its service port) into
// a host:port the host can dial (protocol.md §14.2: ClusterIP, else a ready
// EndpointSlice address). When it is nil or fails, the proxy falls back to
// the API server's service proxy.
type ServiceResolver interface {
	Resolve(ctx context.Context, namespace, name string, port int) (hostport string, err error)
}

// ServiceRef names a Service port.
type ServiceRef struct {
	Namespace, Name string
	Port            int
}

// IngressRoutes is the route cache of §6.3 rules 1 and 4 (the routes
// subsystem implements it).
type IngressRoutes interface {
	// RouteFor reports the ingress controller Service when host is a managed route.
	RouteFor(host string) (ServiceRef, bool)
	// Controller is the detected ingress-controller Service.
	Controller() (ServiceRef, bool)
}

// Options configure a Proxy.
type Options struct {
	Log *slog.Logger
	// RESTConfig returns the proxy ServiceAccount's config (protocol.md
	// §14.1); nil until the agent has bootstrapped its identity.
	RESTConfig func() *rest.Config
	// Resolver finds Service targets; nil uses the API server service proxy.
	Resolver ServiceResolver
	// Routes is the ingress route cache; nil disables rules 1 and 4.
	Routes IngressRoutes
	// MaxInFlight bounds concurrent requests and relays (default 256).
	MaxInFlight int
	// MaxBufferedBytes caps a buffered (non-streaming) response (default 64 MiB).
	MaxBufferedBytes int64
	// MemoryBudget caps the bytes all buffered responses hold at once
	// (default 192 MiB); past it a buffered response fails with a clear error.
	MemoryBudget int64
	// Egress is the dial policy for Service targets; nil is the strict
	// policy with nothing allowed beyond it.
	Egress *egress.Policy
	// DefaultTimeout is the deadline of plain calls (default 2 min, §6.4).
	DefaultTimeout time.Duration
	// ClusterDomain builds the default Host of Service calls (default cluster.local).
	ClusterDomain string
	// Registerer receives the pipeops_agent_proxy_* metrics; nil skips them.
	Registerer prometheus.Registerer
	// Now is the clock; nil is time.Now.
	Now func() time.Time
	// KubeUnreachable says why the API server cannot be reached now (nil
	// while it answers). Calls bound for it are then answered at once with
	// that reason instead of each waiting on a dead connection. Optional.
	KubeUnreachable func() error
	// KubeFailed is told when a call could not reach the API server, so
	// the prober looks again at once. Optional.
	KubeFailed func()
}

// Proxy is the proxy handler. Construct with New.
type Proxy struct {
	o       Options
	log     *slog.Logger
	slots   chan struct{}
	m       *metrics
	clients clientCache
	budget  *memBudget

	mu     sync.Mutex
	calls  map[callKey]*call
	relays map[callKey]*relay
	apps   map[callKey]*relay

	owned    owned       // every goroutine the proxy starts
	draining atomic.Bool // Drain began: new work is refused
}

// callKey scopes a request or stream id to one connection generation, so a
// reused id on a newer connection never touches an older call.
type callKey struct {
	gen uint64
	id  string
}

// call is one in-flight proxy_request.
type call struct {
	cancel    context.CancelCauseFunc
	body      *bodyPipe // streamed request body; nil otherwise
	longLived bool      // a watch, follow=true or event stream: never drained, ended at once
}

var _ protocol.Handler = (*Proxy)(nil)

// Cancellation causes. errCancelled and a closed connection end a call
// silently (§6.6); errDeadline produces an error message.
var (
	errCancelled = errors.New("cancelled by the control plane")
	errDeadline  = errors.New("request deadline exceeded")
	errShutdown  = errors.New("relay closed")
	// errStopping ends what a shutdown does not wait for, with a message.
	errStopping = errors.New("the agent is shutting down; retry once it is back")
)

// New builds a Proxy; it starts nothing.
func New(o Options) (*Proxy, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.RESTConfig == nil {
		o.RESTConfig = func() *rest.Config { return nil }
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = 256
	}
	if o.MaxBufferedBytes <= 0 {
		o.MaxBufferedBytes = 64 << 20
	}
	if o.MemoryBudget <= 0 {
		o.MemoryBudget = 192 << 20
	}
	if o.Egress == nil {
		var err error
		if o.Egress, err = egress.New(egress.Options{Log: o.Log}); err != nil {
			return nil, err
		}
	}
	if o.DefaultTimeout <= 0 {
		o.DefaultTimeout = 2 * time.Minute
	}
	if o.ClusterDomain == "" {
		o.ClusterDomain = "cluster.local"
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	budget := newMemBudget(o.MemoryBudget)
	m, err := newMetrics(o.Registerer, budget)
	if err != nil {
		return nil, err
	}
	return &Proxy{
		o: o, log: o.Log, m: m, slots: make(chan struct{}, o.MaxInFlight), budget: budget,
		clients: clientCache{dial: dialWithin(o.Egress.DialContext, dialTimeout)},
		calls:   map[callKey]*call{}, relays: map[callKey]*relay{}, apps: map[callKey]*relay{},
	}, nil
}

// Types lists the inbound message types the proxy serves.
func (p *Proxy) Types() []string {
	return []string{
		protocol.TypeProxyRequest, protocol.TypeProxyRequestChunk, protocol.TypeProxyRequestStreamEnd,
		protocol.TypeProxyCancel, protocol.TypeProxyStreamData,
		protocol.TypeProxyWebSocketStart, protocol.TypeProxyWebSocketData, protocol.TypeProxyWebSocketClose,
		protocol.TypeWSStart, protocol.TypeWSData, protocol.TypeWSClose,
		protocol.TypeTCPTunnelStart, protocol.TypeUDPTunnelData,
	}
}

// Handle dispatches one message. It runs on the connection's reader
// goroutine, so it only decodes, registers and starts goroutines; the one
// place it may block is ordered delivery of a request-body chunk into its
// bounded pipe (backpressure toward the control plane).
func (p *Proxy) Handle(c protocol.Conn, env *protocol.Envelope) {
	defer func() {
		if r := recover(); r != nil {
			p.log.Error("proxy handler panicked", logging.KeyType, env.Type, logging.KeyRequestID, env.RequestID,
				logging.KeyErr, fmt.Sprint(r), logging.KeyStack, string(debug.Stack()))
		}
	}()
	switch env.Type {
	case protocol.TypeProxyRequest:
		p.startRequest(c, env)
	case protocol.TypeProxyRequestChunk:
		p.requestChunk(c, env)
	case protocol.TypeProxyRequestStreamEnd:
		p.requestEnd(c, env)
	case protocol.TypeProxyCancel:
		p.cancel(c, env.RequestID)
	case protocol.TypeProxyStreamData:
		// Unspecified meaning (§5.1): accepted and ignored.
		p.log.Debug("proxy_stream_data ignored", logging.KeyRequestID, env.RequestID)
	case protocol.TypeProxyWebSocketStart, protocol.TypeWSStart:
		p.startRelayMessage(c, env)
	case protocol.TypeProxyWebSocketData, protocol.TypeWSData:
		p.relayData(c, env)
	case protocol.TypeProxyWebSocketClose, protocol.TypeWSClose:
		p.relayClose(c, env)
	case protocol.TypeTCPTunnelStart:
		// Legacy JSON L4 tunnels are not implemented (§5.3): say so.
		id := env.RequestID
		p.goSafe("tcp_tunnel_close", func() {
			_ = c.Send(c.Context(), protocol.TypeTCPTunnelClose, id, protocol.TCPTunnelClose{Reason: "unsupported"})
		})
	case protocol.TypeUDPTunnelData:
		p.log.Debug("udp_tunnel_data ignored: legacy UDP tunnels are not supported")
	}
}

// goSafe runs fn in a goroutine that cannot crash the agent and that
// Drain joins.
func (p *Proxy) goSafe(what string, fn func()) {
	p.owned.add()
	go func() {
		defer p.owned.done()
		defer func() {
			if r := recover(); r != nil {
				p.log.Error("proxy goroutine panicked", "what", what, logging.KeyErr, fmt.Sprint(r), logging.KeyStack, string(debug.Stack()))
			}
		}()
		fn()
	}()
}

// acquire takes an in-flight slot without waiting: excess work is refused,
// never queued without bound.
func (p *Proxy) acquire() bool {
	if p.draining.Load() {
		return false // the caller answers with busyMessage: shutting down
	}
	select {
	case p.slots <- struct{}{}:
		p.m.inFlight(1)
		return true
	default:
		return false // the caller answers, and counts it as rejected
	}
}

func (p *Proxy) release() {
	<-p.slots
	p.m.inFlight(-1)
}

func (p *Proxy) busyMessage() string {
	if p.draining.Load() {
		return errStopping.Error()
	}
	return fmt.Sprintf("agent is at its limit of %d concurrent proxied requests and relays; retry shortly, or raise proxy.max_in_flight", cap(p.slots))
}

// cancel ends a call or relay of this connection (proxy_cancel, §6.6).
func (p *Proxy) cancel(c protocol.Conn, id string) {
	k := callKey{c.Generation(), id}
	p.mu.Lock()
	cl := p.calls[k]
	r := p.relays[k]
	a := p.apps[k]
	p.mu.Unlock()
	if cl != nil {
		cl.cancel(errCancelled)
	}
	if r != nil {
		r.stop(errCancelled)
	}
	if a != nil {
		a.stop(errCancelled)
	}
}

// InFlight is the number of requests and relays running now.
func (p *Proxy) InFlight() int { return len(p.slots) }

// kubeDown is the API server's known unreachability, or nil.
func (p *Proxy) kubeDown() error {
	if p.o.KubeUnreachable == nil {
		return nil
	}
	return p.o.KubeUnreachable()
}

func (p *Proxy) kubeFailed() {
	if p.o.KubeFailed != nil {
		p.o.KubeFailed()
	}
}

// Drain is the proxy's part of shutdown (protocol.md §8.7), run while the
// control-plane connection is still open: it refuses new work, ends
// long-lived calls and relays at once (watches, follow=true logs, exec,
// port-forward and WebSockets never finish by themselves) with a message,
// lets plain requests finish until ctx ends, then cancels the rest and
// returns once every goroutine the proxy started has ended. Calling it
// again only waits.
func (p *Proxy) Drain(ctx context.Context) {
	p.draining.Store(true)
	p.mu.Lock()
	var stop []func(error)
	for _, cl := range p.calls {
		if cl.longLived {
			stop = append(stop, cl.cancel)
		}
	}
	for _, r := range p.relays {
		stop = append(stop, r.stop)
	}
	for _, r := range p.apps {
		stop = append(stop, r.stop)
	}
	p.mu.Unlock()
	for _, s := range stop {
		s(errStopping)
	}
	select {
	case <-p.owned.idle():
		return
	case <-ctx.Done():
	}
	p.mu.Lock()
	n := len(p.calls)
	for _, cl := range p.calls {
		cl.cancel(errStopping)
	}
	p.mu.Unlock()
	p.log.Warn("proxied requests still running at the end of the shutdown drain; cancelled them", logging.KeyCount, n)
	<-p.owned.idle() // cancelled calls end promptly: their backend calls share the context
}

// owned counts running goroutines; idle is closed while there are none.
// Unlike a WaitGroup, it may grow again while someone waits.
type owned struct {
	mu   sync.Mutex
	n    int
	none chan struct{}
}

func (o *owned) add() {
	o.mu.Lock()
	if o.n == 0 {
		o.none = make(chan struct{})
	}
	o.n++
	o.mu.Unlock()
}

func (o *owned) done() {
	o.mu.Lock()
	o.n--
	if o.n == 0 {
		close(o.none)
	}
	o.mu.Unlock()
}

// idle returns a channel closed when no owned goroutine runs.
func (o *owned) idle() <-chan struct{} {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.n == 0 {
		ch := make(chan struct{})
		close(ch)
		return ch
	}
	return o.none
}
