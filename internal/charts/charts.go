// Package charts does the monitoring stack's Helm work (protocol.md §12)
// through the Helm v3 SDK; package monitor decides when, and keeps status,
// events and heartbeats. A round installs or upgrades metrics-server, VPA,
// the CoreDNS rewrite (internal/coredns), Traefik when the cluster has no
// ingress controller, cert-manager (unless one runs already) with its
// letsencrypt ClusterIssuers, the pinned prometheus-operator CRDs (applied
// server-side, never deleted), kube-prometheus-stack with Grafana, and
// Loki. It compares what Helm recorded for every release (chart, version
// and values) with what the agent would render and calls Helm only when
// they differ; releases left failed or pending-* by a crash are rolled back
// or reinstalled. Generated credentials are stored through the monitor.Sink
// and never regenerated. The Engine is a monitor.Backend that runs in the
// pipeops-agent-helm worker process (Worker), so only that command and
// tests link Helm; the daemon never does.
package charts

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"

	"github.com/pipeops/pipeops-vm-agent/internal/monitor"
)

// Component and Endpoint are monitor's: the daemon side knows them without Helm.
type (
	Component = monitor.Component
	Endpoint  = monitor.Endpoint
)

// Options configure an Engine. Zero durations take the defaults of
// protocol.md §12.
type Options struct {
	monitor.Settings
	// RESTConfig returns the admin identity's config; it may block or fail
	// until the Kubernetes API is known.
	RESTConfig func(ctx context.Context) (*rest.Config, error)
	Log        *slog.Logger
	// PollInterval is how often readiness is checked.
	PollInterval time.Duration
}

func (o *Options) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.Timeout, 10*time.Minute)
	def(&o.ReadyTimeout, 5*time.Minute)
	def(&o.PollInterval, 2*time.Second)
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.ClusterDomain == "" {
		o.ClusterDomain = "cluster.local"
	}
}

// Engine is the Helm side of the stack: a monitor.Backend. Its calls never
// overlap (the monitor.Manager serializes them), and each reports to the
// Sink it was given.
type Engine struct {
	opts  Options
	log   *slog.Logger
	calls callCounters

	envMu sync.Mutex
	helm  *helmEnv
	kube  kubernetes.Interface
	dyn   dynamic.Interface  // CRDs and ClusterIssuers
	meta  metadata.Interface // metadata-only reads (the CRDs are large)

	sink monitor.Sink // of the call in progress
	// skipped holds, per component, why a round left it alone (a foreign
	// cert-manager, say); notes what its ready state should say.
	skipped, notes map[string]string
}

// New returns an engine. It dials nothing.
func New(o Options) (*Engine, error) {
	o.setDefaults()
	if o.CacheDir == "" {
		return nil, errors.New("charts: a cache directory is required (never $HOME)")
	}
	return &Engine{opts: o, log: o.Log}, nil
}

// Calls reports how many Helm actions the engine has made (tests).
func (m *Engine) Calls() HelmCalls { return m.calls.snapshot() }

func (m *Engine) component(name string) *Component {
	for i := range m.opts.Components {
		if m.opts.Components[i].Name == name {
			return &m.opts.Components[i]
		}
	}
	return nil
}

// env returns Helm and a clientset for the admin identity, built once.
func (m *Engine) env(ctx context.Context) (*helmEnv, kubernetes.Interface, error) {
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
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, nil, err
	}
	meta, err := metadata.NewForConfig(cfg)
	if err != nil {
		return nil, nil, err
	}
	m.helm, m.kube, m.dyn, m.meta = newHelmEnv(cfg, m.opts.CacheDir, m.log, &m.calls), cs, dyn, meta
	return m.helm, m.kube, nil
}

// setRelease reports one release's state.
func (m *Engine) setRelease(c *Component, stateName, reason string, info *monitor.ReleaseInfo) {
	m.sink.SetRelease(c.Name, stateName, reason, info)
}
