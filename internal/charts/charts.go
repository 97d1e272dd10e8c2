// Package charts installs and keeps the monitoring stack (protocol.md §12)
// through the Helm v3 SDK: metrics-server, VPA, Traefik when the cluster has
// no ingress controller, kube-prometheus-stack with Grafana, and Loki. Each
// round compares what Helm recorded for every release (chart, version and
// values) with what the agent would render and calls Helm only when they
// differ; releases left failed or pending-* by a crash are rolled back or
// reinstalled. Generated credentials live in the state store and are never
// regenerated. Only the daemon imports this package.
package charts

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/health"
	"github.com/pipeops/pipeops-vm-agent/internal/state"
)

// HealthCondition is the (not required) health condition this package sets.
const HealthCondition = "monitoring"

// Component is one release of the stack and where its chart comes from.
type Component struct {
	// Name is the config key: metrics_server, vpa, traefik, prometheus or loki.
	Name      string
	Release   string
	Namespace string
	// Repo + Chart + Version, or Chart as an oci:// reference or an absolute
	// path to a .tgz or chart directory.
	Repo, Chart, Version string
	// Values are the user's overrides, deep-merged over the agent's defaults.
	Values map[string]any
}

// Options configure a Manager. Zero durations take the defaults of
// protocol.md §12.
type Options struct {
	Enabled bool
	// Components are the enabled releases, in install order.
	Components []Component
	// Grafana enables Grafana inside the prometheus release.
	Grafana bool
	// GrafanaSubPath sets root_url and serve_from_sub_path (agent.grafana_sub_path).
	GrafanaSubPath bool
	// APIURL is the control plane's base URL, the start of Grafana's root_url.
	APIURL string
	// ClusterDomain is the cluster's DNS domain for advertised URLs.
	ClusterDomain string
	// Profile is auto (from node allocatable), small, medium or large.
	Profile string
	// ChartsDir, when set, is the only place charts are read from.
	ChartsDir string
	// CacheDir holds Helm's caches and registry config.
	CacheDir string
	// Timeout bounds one Helm action; ReadyTimeout one release's readiness wait.
	Timeout, ReadyTimeout time.Duration
	// RESTConfig returns the admin identity's config; it may block or fail
	// until the Kubernetes API is known.
	RESTConfig func(ctx context.Context) (*rest.Config, error)
	State      *state.Store
	Health     *health.Tracker // optional
	Log        *slog.Logger
	// OnEndpoints is called when the set of ready endpoints changes (the
	// daemon registers tunnel forwards for them). It must not block.
	OnEndpoints func([]Endpoint)

	// RetryBase and RetryMax bound the bootstrap's backoff (30 s → 10 min).
	RetryBase, RetryMax time.Duration
	// Resync is how often a healthy stack is compared again (reads only).
	Resync time.Duration
	// PollInterval is how often readiness is checked.
	PollInterval time.Duration
	// Now is the clock (tests).
	Now func() time.Time
}

func (o *Options) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.Timeout, 10*time.Minute)
	def(&o.ReadyTimeout, 5*time.Minute)
	def(&o.RetryBase, 30*time.Second)
	def(&o.RetryMax, 10*time.Minute)
	def(&o.Resync, 10*time.Minute)
	def(&o.PollInterval, 2*time.Second)
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.ClusterDomain == "" {
		o.ClusterDomain = "cluster.local"
	}
}

// Manager reconciles the stack. Run drives it; Install and Uninstall are the
// local API's actions. Safe for concurrent use.
type Manager struct {
	opts  Options
	log   *slog.Logger
	calls callCounters

	envMu sync.Mutex
	helm  *helmEnv
	kube  kubernetes.Interface

	// roundMu serializes rounds and uninstalls.
	roundMu sync.Mutex

	mu          sync.Mutex
	releases    map[string]*apitype.Release // by component name
	endpoints   map[string]Endpoint         // by prometheus, loki, grafana
	profile     string
	lastErr     string
	lastRound   time.Time
	nextRetry   time.Time
	suspended   bool
	cancelRound context.CancelFunc
	waiters     []chan error
	subs        map[int]chan apitype.MonitoringEvent
	nextSub     int
	kick        chan struct{}
}

// New returns a manager. It starts nothing and dials nothing.
func New(o Options) (*Manager, error) {
	o.setDefaults()
	if o.State == nil {
		return nil, errors.New("charts: a state store is required")
	}
	if o.CacheDir == "" {
		return nil, errors.New("charts: a cache directory is required (never $HOME)")
	}
	m := &Manager{opts: o, log: o.Log, releases: map[string]*apitype.Release{}, endpoints: map[string]Endpoint{},
		subs: map[int]chan apitype.MonitoringEvent{}, kick: make(chan struct{}, 1)}
	for _, c := range o.Components {
		if !o.Enabled {
			break // Status lists releases only once something acts on them
		}
		m.releases[c.Name] = &apitype.Release{Component: c.Name, Name: c.Release, Namespace: c.Namespace,
			Chart: c.Chart, Version: c.Version, State: apitype.ReleasePending, Reason: "waiting for the first round"}
	}
	return m, nil
}

// Calls reports how many Helm actions the manager has made (tests, status).
func (m *Manager) Calls() HelmCalls { return m.calls.snapshot() }

func (m *Manager) component(name string) *Component {
	for i := range m.opts.Components {
		if m.opts.Components[i].Name == name {
			return &m.opts.Components[i]
		}
	}
	return nil
}

// env returns Helm and a clientset for the admin identity, built once.
func (m *Manager) env(ctx context.Context) (*helmEnv, kubernetes.Interface, error) {
	m.envMu.Lock()
	defer m.envMu.Unlock()
	if m.helm != nil {
		return m.helm, m.kube, nil
	}
	if m.opts.RESTConfig == nil {
		return nil, nil, errors.New("no Kubernetes access configured")
	}
	cfg, err := m.opts.RESTConfig(ctx)
	if err != nil {
		return nil, nil, err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, err
	}
	m.helm, m.kube = newHelmEnv(cfg, m.opts.CacheDir, m.log, &m.calls), cs
	return m.helm, m.kube, nil
}

// Status is the monitoring section of the local status API.
func (m *Manager) Status() apitype.MonitoringStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := apitype.MonitoringStatus{Enabled: m.opts.Enabled, Profile: m.profile, LastError: m.lastErr,
		LastRound: m.lastRound, NextRetry: m.nextRetry, Suspended: m.suspended, Endpoints: m.endpointList()}
	for _, c := range m.opts.Components {
		if r := m.releases[c.Name]; r != nil {
			st.Releases = append(st.Releases, *r)
		}
	}
	return st
}

// setRelease records one release's state and tells subscribers.
func (m *Manager) setRelease(c *Component, stateName, reason string, mutate func(r *apitype.Release)) {
	m.mu.Lock()
	r := m.releases[c.Name]
	if r == nil {
		r = &apitype.Release{Component: c.Name, Name: c.Release, Namespace: c.Namespace}
		m.releases[c.Name] = r
	}
	r.State, r.Reason, r.UpdatedAt = stateName, reason, m.opts.Now()
	if mutate != nil {
		mutate(r)
	}
	ev := apitype.MonitoringEvent{Time: r.UpdatedAt, Release: *r}
	m.publishLocked(ev)
	m.mu.Unlock()
}

func (m *Manager) publishLocked(ev apitype.MonitoringEvent) {
	for _, ch := range m.subs {
		select {
		case ch <- ev:
		default: // a slow reader loses intermediate steps, never blocks the round
		}
	}
}

// subscribe returns a channel of progress events and its cancel function.
func (m *Manager) subscribe() (<-chan apitype.MonitoringEvent, func()) {
	m.mu.Lock()
	defer m.mu.Unlock()
	id := m.nextSub
	m.nextSub++
	ch := make(chan apitype.MonitoringEvent, 64)
	m.subs[id] = ch
	return ch, func() {
		m.mu.Lock()
		delete(m.subs, id)
		m.mu.Unlock()
	}
}
