package charts

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/registry"
	"helm.sh/helm/v3/pkg/release"
	"helm.sh/helm/v3/pkg/storage/driver"
	"k8s.io/client-go/rest"
)

// HelmCalls counts the Helm actions that change releases. Reads of release
// storage (one Secret GET per release per round) are counted apart: they are
// how the manager learns what is deployed without keeping a second copy.
type HelmCalls struct {
	Installs   int64 `json:"installs"`
	Upgrades   int64 `json:"upgrades"`
	Rollbacks  int64 `json:"rollbacks"`
	Uninstalls int64 `json:"uninstalls"`
	Reads      int64 `json:"reads"`
}

// Mutations is the number of calls that changed a release.
func (c HelmCalls) Mutations() int64 { return c.Installs + c.Upgrades + c.Rollbacks + c.Uninstalls }

type callCounters struct{ installs, upgrades, rollbacks, uninstalls, reads atomic.Int64 }

func (c *callCounters) snapshot() HelmCalls {
	return HelmCalls{Installs: c.installs.Load(), Upgrades: c.upgrades.Load(), Rollbacks: c.rollbacks.Load(),
		Uninstalls: c.uninstalls.Load(), Reads: c.reads.Load()}
}

// helmEnv is Helm for one cluster: an action.Configuration per namespace
// (release storage is namespaced), and Helm's file paths set explicitly under
// the cache directory so nothing falls back to $HOME.
type helmEnv struct {
	rest     *rest.Config
	cacheDir string
	log      *slog.Logger
	calls    *callCounters

	mu       sync.Mutex
	cfgs     map[string]*action.Configuration
	registry *registry.Client
}

func newHelmEnv(cfg *rest.Config, cacheDir string, log *slog.Logger, calls *callCounters) *helmEnv {
	return &helmEnv{rest: cfg, cacheDir: cacheDir, log: log, calls: calls, cfgs: map[string]*action.Configuration{}}
}

// registryClient is built lazily: only OCI charts need it.
func (h *helmEnv) registryClient() (*registry.Client, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.registry != nil {
		return h.registry, nil
	}
	if err := os.MkdirAll(filepath.Join(h.cacheDir, "registry"), 0o700); err != nil {
		return nil, fmt.Errorf("create helm registry dir: %w", err)
	}
	rc, err := registry.NewClient(registry.ClientOptCredentialsFile(filepath.Join(h.cacheDir, "registry", "config.json")),
		registry.ClientOptWriter(io.Discard), registry.ClientOptEnableCache(true))
	if err != nil {
		return nil, fmt.Errorf("create helm registry client: %w", err)
	}
	h.registry = rc
	return rc, nil
}

// config returns the action configuration for releases stored in namespace.
func (h *helmEnv) config(namespace string) (*action.Configuration, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if c, ok := h.cfgs[namespace]; ok {
		return c, nil
	}
	c := new(action.Configuration)
	debug := func(format string, v ...any) { h.log.Debug(fmt.Sprintf(format, v...), "helm_namespace", namespace) }
	if err := c.Init(newRESTGetter(h.rest, namespace), namespace, "secret", debug); err != nil {
		return nil, fmt.Errorf("set up helm for namespace %s: %w", namespace, err)
	}
	h.cfgs[namespace] = c
	return c, nil
}

// last returns the newest revision of a release, or nil when there is none.
func (h *helmEnv) last(namespace, name string) (*release.Release, error) {
	c, err := h.config(namespace)
	if err != nil {
		return nil, err
	}
	h.calls.reads.Add(1)
	rel, err := c.Releases.Last(name)
	if errors.Is(err, driver.ErrReleaseNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read release %s/%s: %w", namespace, name, err)
	}
	return rel, nil
}

// history returns every stored revision of a release, oldest first.
func (h *helmEnv) history(namespace, name string) ([]*release.Release, error) {
	c, err := h.config(namespace)
	if err != nil {
		return nil, err
	}
	h.calls.reads.Add(1)
	hist, err := c.Releases.History(name)
	if errors.Is(err, driver.ErrReleaseNotFound) {
		return nil, nil
	}
	return hist, err
}

// fresh drops cached discovery before an action that applies objects: a
// chart installed since (a CRD from kube-prometheus-stack, say) may have
// added kinds the next chart uses.
func fresh(c *action.Configuration) {
	if dc, err := c.RESTClientGetter.ToDiscoveryClient(); err == nil && dc != nil {
		dc.Invalidate()
	}
}

// maxHistory keeps release storage small: recovery needs the last good revision, not all of them.
const maxHistory = 5

func (h *helmEnv) install(ctx context.Context, s *Component, ch *chart.Chart, vals map[string]any, labels map[string]string, timeout time.Duration) (*release.Release, error) {
	c, err := h.config(s.Namespace)
	if err != nil {
		return nil, err
	}
	fresh(c)
	in := action.NewInstall(c)
	in.ReleaseName, in.Namespace, in.CreateNamespace = s.Release, s.Namespace, true
	in.Timeout, in.Labels = timeout, labels
	// kube-prometheus-stack's CRDs come from the pinned prometheus-operator
	// bundle, applied server-side before the chart (crds.go).
	in.SkipCRDs = s.Name == "prometheus"
	// Readiness is waited for by the manager (ready.go), with its own timeout
	// and a reason that names what is not ready.
	in.Wait = false
	h.calls.installs.Add(1)
	return in.RunWithContext(ctx, ch, vals)
}

func (h *helmEnv) upgrade(ctx context.Context, s *Component, ch *chart.Chart, vals map[string]any, labels map[string]string, timeout time.Duration) (*release.Release, error) {
	c, err := h.config(s.Namespace)
	if err != nil {
		return nil, err
	}
	fresh(c)
	up := action.NewUpgrade(c)
	up.Namespace, up.Timeout, up.Labels, up.MaxHistory = s.Namespace, timeout, labels, maxHistory
	h.calls.upgrades.Add(1)
	return up.RunWithContext(ctx, s.Release, ch, vals)
}

func (h *helmEnv) rollback(namespace, name string, revision int, timeout time.Duration) error {
	c, err := h.config(namespace)
	if err != nil {
		return err
	}
	fresh(c)
	rb := action.NewRollback(c)
	rb.Version, rb.Timeout, rb.MaxHistory = revision, timeout, maxHistory
	h.calls.rollbacks.Add(1)
	return rb.Run(name)
}

func (h *helmEnv) uninstall(namespace, name string, timeout time.Duration) error {
	c, err := h.config(namespace)
	if err != nil {
		return err
	}
	un := action.NewUninstall(c)
	un.Timeout, un.IgnoreNotFound = timeout, true
	h.calls.uninstalls.Add(1)
	_, err = un.Run(name)
	return err
}

// markFailed rewrites a stuck pending-* revision as failed, so that the next
// Helm action is not refused with "another operation is in progress".
func (h *helmEnv) markFailed(rel *release.Release, why string) error {
	c, err := h.config(rel.Namespace)
	if err != nil {
		return err
	}
	rel.Info.Status = release.StatusFailed
	rel.Info.Description = why
	return c.Releases.Update(rel)
}
