// Package routesync watches managed Ingresses and registers their routes with
// the control plane's REST API (protocol.md §9): a full sync at start, after
// every reconnect and every refresh interval; register on a real route
// change; unregister on delete, tombstones included. It detects the ingress
// controller that routes target and the cluster's routing mode, and keeps a
// host → controller cache for the proxy (§6.3 rule 1).
package routesync

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/workqueue"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/backoff"
	"github.com/pipeops/pipeops-vm-agent/internal/health"
	"github.com/pipeops/pipeops-vm-agent/internal/logging"
)

// HealthCondition is the (not required) health condition routesync reports.
const HealthCondition = "routes"

// Options configure a Syncer. Zero durations take the spec's defaults.
type Options struct {
	// Kube returns the clientset; Run calls it once and waits for it. Use
	// StaticKube for a clientset that already exists.
	Kube func(ctx context.Context) (kubernetes.Interface, error)
	// APIURL is PIPEOPS_API_URL; Token returns the Bearer token per call.
	APIURL string
	Token  func() string
	// TLS is the REST calls' TLS configuration: the link's (tlsconfig.New
	// of pipeops.tls), so the calls cannot be weaker than the WebSocket.
	// Nil uses the system roots.
	TLS *tls.Config
	// ClusterID returns the id route bodies carry (§15.1); nothing is sent while it is empty.
	ClusterID func() string
	// Namespace limits the watch to one namespace ("" = all). Tests use it for isolation.
	Namespace string
	// RefreshInterval is the periodic full sync (4 h).
	RefreshInterval time.Duration
	ForceTunnel     bool
	// Controller detection (§9.3): candidates in order, the label-search
	// namespaces, and the routing-mode candidates. Nil takes the defaults.
	ControllerCandidates []types.NamespacedName
	LabelNamespaces      []string
	RoutingCandidates    []types.NamespacedName
	// The first full sync waits up to DetectTimeout (3 min) for a controller,
	// looking every DetectInterval (5 s) and on every Service event.
	DetectInterval, DetectTimeout time.Duration
	// RetryBase and RetryMax bound the delay before a failed full sync is
	// retried (1 s, 15 s); PermanentRetry is the delay after an answer that
	// retrying will not change, such as 401 (5 min).
	RetryBase, RetryMax, PermanentRetry time.Duration
	// Registerer takes the REST attempt and failure counters; nil keeps them unregistered.
	Registerer prometheus.Registerer
	Health     *health.Tracker
	Log        *slog.Logger
}

// StaticKube wraps an existing clientset for Options.Kube.
func StaticKube(c kubernetes.Interface) func(context.Context) (kubernetes.Interface, error) {
	return func(context.Context) (kubernetes.Interface, error) { return c, nil }
}

// Queue keys that are not ingresses; ingress keys never start with NUL.
const (
	fullSyncKey = "\x00full-sync"
	detectKey   = "\x00detect"
)

// Syncer is the route watcher. Build it with New; Run does the work.
type Syncer struct {
	opt    Options
	log    *slog.Logger
	client *Client
	q      workqueue.TypedRateLimitingInterface[string]
	start  time.Time

	// fullGen counts full-sync requests; the worker records the last one served in doneGen.
	fullGen atomic.Uint64

	// Worker-only state (one worker goroutine).
	doneGen  uint64
	lp       *health.Loop // the worker is a watched loop ("routes")
	bo       *backoff.Backoff
	cache    *caches
	reg      map[string]map[string]route // what the control plane has: host → route id → route
	regHosts map[string]map[string]int   // ingress key → host → routes registered

	mu       sync.RWMutex // guards what readers see
	desired  map[string][]route
	hosts    map[string]int // host → managed routes, for Lookup
	nRoutes  int
	ctrl     controller
	rt       routing
	status   apitype.RoutesStatus // the last sync's outcome; Status fills in the rest
	ctrlSeen bool
}

// New builds a Syncer and registers its metrics; it starts nothing.
func New(opt Options) (*Syncer, error) {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&opt.RefreshInterval, 4*time.Hour)
	def(&opt.DetectInterval, 5*time.Second)
	def(&opt.DetectTimeout, 3*time.Minute)
	def(&opt.RetryBase, time.Second)
	def(&opt.RetryMax, 15*time.Second)
	def(&opt.PermanentRetry, 5*time.Minute)
	if opt.ControllerCandidates == nil {
		opt.ControllerCandidates = DefaultControllerCandidates
	}
	if opt.LabelNamespaces == nil {
		opt.LabelNamespaces = DefaultLabelNamespaces
	}
	if opt.RoutingCandidates == nil {
		opt.RoutingCandidates = DefaultRoutingCandidates
	}
	if opt.ClusterID == nil {
		opt.ClusterID = func() string { return "" }
	}
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(opt.Registerer)
	if err != nil {
		return nil, err
	}
	c := NewClient(opt.APIURL, opt.Token, newHTTPClient(opt.TLS))
	c.OnAttempt = m.attempt
	rl := workqueue.NewTypedItemExponentialFailureRateLimiter[string](opt.RetryBase, opt.RetryMax)
	s := &Syncer{
		opt: opt, log: opt.Log, client: c, bo: backoff.New(opt.RetryBase, opt.RetryMax),
		q:   workqueue.NewTypedRateLimitingQueueWithConfig(rl, workqueue.TypedRateLimitingQueueConfig[string]{Name: "routesync"}),
		reg: map[string]map[string]route{}, regHosts: map[string]map[string]int{},
		desired: map[string][]route{}, hosts: map[string]int{},
	}
	// A full sync is pending from the start, so ingress events queued before
	// it (the informers' initial adds) cause no per-route calls.
	s.fullGen.Store(1)
	s.rt = detectRouting(nil, nil, true) // tunnel until detected
	return s, nil
}

// Client is the REST client (tests inspect its settings).
func (s *Syncer) Client() *Client { return s.client }

// Run watches until ctx ends and returns nil.
func (s *Syncer) Run(ctx context.Context) error {
	defer s.q.ShutDown()
	s.start = time.Now()
	s.setHealth(false, "waiting for the Kubernetes API")
	kc, err := s.opt.Kube(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("route sync: get Kubernetes client: %w", err)
	}
	s.cache = newCaches(kc, s.opt.Namespace, s)
	s.cache.start(ctx)
	defer s.cache.stop()
	if !s.cache.wait(ctx) {
		return nil
	}
	s.log.Info("ingress cache synced", logging.KeyIngresses, s.cache.ingressCount())
	s.q.Add(detectKey)
	s.Resync()
	go func() {
		<-ctx.Done()
		s.q.ShutDown()
	}()
	go s.refresh(ctx)
	s.lp = s.opt.Health.Loop("routes") // nil Health: not watched
	defer s.lp.Done()
	for s.processNext(ctx) {
	}
	return nil
}

// Resync asks for a full sync: the control-plane link calls it after every
// (re)connection. Safe for concurrent use; cheap when one is already queued.
func (s *Syncer) Resync() {
	s.fullGen.Add(1)
	s.q.Add(fullSyncKey)
}

func (s *Syncer) refresh(ctx context.Context) {
	t := time.NewTicker(s.opt.RefreshInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.Resync()
		}
	}
}

// Lookup finds a managed route's host (the Host header; a port is ignored)
// and returns the ingress controller's Service it targets (§6.3 rule 1).
func (s *Syncer) Lookup(host string) (namespace, service string, port int, ok bool) {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if !s.ctrl.found() || host == "" {
		return "", "", 0, false
	}
	hit := s.hosts[host] > 0
	if !hit {
		if _, rest, cut := strings.Cut(host, "."); cut {
			hit = s.hosts["*."+rest] > 0
		}
	}
	if !hit {
		return "", "", 0, false
	}
	return s.ctrl.Namespace, s.ctrl.Name, int(s.ctrl.Port), true
}

// Controller is the detected ingress-controller Service (§6.3 rule 4).
func (s *Syncer) Controller() (namespace, service string, port int, ok bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if !s.ctrl.found() {
		return "", "", 0, false
	}
	return s.ctrl.Namespace, s.ctrl.Name, int(s.ctrl.Port), true
}

// RouteCount is the number of managed routes, for heartbeat gateway_routes.
func (s *Syncer) RouteCount() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.nRoutes
}

// IsPrivate is heartbeat is_private: true unless the cluster routes directly.
func (s *Syncer) IsPrivate() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.rt.Private
}

// Status is the routes section of the local status API.
func (s *Syncer) Status() apitype.RoutesStatus {
	s.mu.RLock()
	defer s.mu.RUnlock()
	st := s.status
	st.Enabled = true
	st.Count = s.nRoutes
	st.RoutingMode, st.PublicEndpoint = s.rt.Mode, s.rt.PublicEndpoint
	st.IngressController = s.ctrl.String()
	return st
}

func (s *Syncer) setHealth(ok bool, reason string) {
	if s.opt.Health != nil {
		s.opt.Health.Set(HealthCondition, ok, reason)
	}
}

// record stores the outcome of a REST operation for status and health.
func (s *Syncer) record(op string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if op == OpSync {
		s.status.LastSync = time.Now()
		s.status.LastSyncResult = "ok"
		if err != nil {
			s.status.LastSyncResult = "failed"
		}
	}
	if err != nil {
		s.status.LastError = err.Error()
		s.setHealth(false, err.Error())
		return
	}
	if op == OpSync {
		s.status.LastError = ""
	}
	s.setHealth(true, "")
}
