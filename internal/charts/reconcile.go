package charts

import (
	"context"
	"fmt"

	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/release"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/logging"
	"github.com/pipeops/pipeops-vm-agent/internal/monitor"
)

// Release labels (stored by Helm on its release records).
const (
	labelManagedBy   = "pipeops.io/managed-by"
	labelChartDigest = "pipeops.io/chart-digest"
)

// gatherFacts reads what the defaults depend on.
func (m *Engine) gatherFacts(ctx context.Context, cs kubernetes.Interface) (facts, error) {
	f := facts{Profile: m.opts.Profile, ClusterID: m.sink.ClusterID()}
	if f.Profile == "" || f.Profile == "auto" {
		// ResourceVersion "0" is served from the apiserver's cache.
		nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{ResourceVersion: "0"})
		if err != nil {
			return f, fmt.Errorf("list nodes to size the stack: %w", err)
		}
		var cpu, mem resource.Quantity
		for _, n := range nodes.Items {
			cpu.Add(n.Status.Allocatable.Cpu().DeepCopy())
			mem.Add(n.Status.Allocatable.Memory().DeepCopy())
		}
		f.Profile = profileFor(cpu, mem)
	}
	scs, err := cs.StorageV1().StorageClasses().List(ctx, metav1.ListOptions{ResourceVersion: "0"})
	if err != nil {
		return f, fmt.Errorf("list storage classes: %w", err)
	}
	for _, sc := range scs.Items {
		if sc.Annotations["storageclass.kubernetes.io/is-default-class"] == "true" {
			f.StorageClass = sc.Name
			break
		}
	}
	return f, nil
}

// desiredValues are the defaults for the cluster's facts with the user's overrides on top.
func (m *Engine) desiredValues(c *Component, f facts) (map[string]any, error) {
	def, err := m.defaults(c, f)
	if err != nil {
		return nil, err
	}
	return normalize(mergeValues(def, c.Values))
}

// reconcile brings one release to its desired state and waits until it is
// ready. It returns the release it waited for.
func (m *Engine) reconcile(ctx context.Context, c *Component, f facts, h *helmEnv, cs kubernetes.Interface) (*release.Release, error) {
	rel, err := h.last(c.Namespace, c.Release)
	if err != nil {
		m.setRelease(c, apitype.ReleaseFailed, err.Error(), nil)
		return nil, err
	}
	if c.Name == "traefik" && rel == nil {
		classes, err := cs.NetworkingV1().IngressClasses().List(ctx, metav1.ListOptions{})
		if err != nil {
			m.setRelease(c, apitype.ReleaseFailed, "list ingress classes: "+err.Error(), nil)
			return nil, err
		}
		if why := foreignIngressClass(classes.Items, c.Release, c.Namespace); why != "" {
			m.setRelease(c, apitype.ReleaseSkipped, why, nil)
			return nil, nil
		}
	}
	if c.Name == "cert_manager" && rel == nil {
		why, err := m.foreignCertManager(ctx, cs, c)
		if err != nil {
			m.setRelease(c, apitype.ReleaseFailed, err.Error(), nil)
			return nil, err
		}
		if why != "" {
			m.skipped[c.Name] = why
			m.setRelease(c, apitype.ReleaseSkipped, why, nil)
			return nil, nil
		}
	}
	if c.Name == "prometheus" {
		if rel != nil {
			if pw, ok := dig(rel.Config, "grafana", "adminPassword").(string); ok {
				m.adoptSecret(monitor.SecretGrafanaPassword, pw)
			}
		}
		// The chart is installed with SkipCRDs: its CRDs come first, pinned.
		note, err := m.ensurePrometheusCRDs(ctx)
		if err != nil {
			err = fmt.Errorf("apply the prometheus-operator %s CRDs: %w", PrometheusOperatorVersion, err)
			m.setRelease(c, apitype.ReleaseFailed, err.Error(), nil)
			return nil, err
		}
		m.notes[c.Name] = note
	}
	vals, err := m.desiredValues(c, f)
	if err != nil {
		m.setRelease(c, apitype.ReleasePending, err.Error(), nil)
		return nil, err
	}
	src, err := m.resolveSource(c)
	if err != nil {
		m.setRelease(c, apitype.ReleaseFailed, err.Error(), nil)
		return nil, err
	}
	var ch *chart.Chart
	digest := ""
	if src.Kind == sourceLocal { // cheap to read, and edits without a version bump must show
		if ch, err = m.loadChart(h, src); err != nil {
			m.setRelease(c, apitype.ReleaseFailed, err.Error(), nil)
			return nil, err
		}
		digest = chartDigest(ch)
	}
	if rel, err = m.recover(c, h, rel); err != nil {
		m.setRelease(c, apitype.ReleaseFailed, err.Error(), nil)
		return nil, err
	}
	why := "not installed"
	if rel != nil {
		why = drift(rel, src, ch, digest, vals)
	}
	if why != "" {
		if rel, err = m.apply(ctx, c, h, src, ch, digest, vals, rel, why); err != nil {
			return nil, err
		}
	}
	m.setRelease(c, apitype.ReleaseInstalling, "waiting for workloads to become ready", releaseInfo(rel))
	if err := m.waitReady(ctx, cs, rel.Manifest, c.Namespace); err != nil {
		m.setRelease(c, apitype.ReleaseFailed, err.Error(), nil)
		return nil, err
	}
	m.setRelease(c, apitype.ReleaseReady, m.notes[c.Name], nil)
	return rel, nil
}

// apply installs (rel == nil) or upgrades the release.
func (m *Engine) apply(ctx context.Context, c *Component, h *helmEnv, src source, ch *chart.Chart, digest string,
	vals map[string]any, rel *release.Release, why string) (*release.Release, error) {
	var err error
	if ch == nil {
		m.setRelease(c, apitype.ReleaseInstalling, "fetching chart "+src.String(), nil)
		if ch, err = m.loadChart(h, src); err != nil {
			m.setRelease(c, apitype.ReleaseFailed, err.Error(), nil)
			return nil, err
		}
	}
	labels := map[string]string{labelManagedBy: "pipeops-agent"}
	if digest != "" {
		labels[labelChartDigest] = digest
	}
	opCtx, cancel := context.WithTimeout(ctx, m.opts.Timeout)
	defer cancel()
	verb, doing, done := "install", "installing", "installed"
	if rel != nil {
		verb, doing, done = "upgrade", "upgrading", "upgraded"
	}
	m.setRelease(c, apitype.ReleaseInstalling, fmt.Sprintf("%s %s %s (%s)", doing, ch.Metadata.Name, ch.Metadata.Version, why), nil)
	var out *release.Release
	if rel == nil {
		out, err = h.install(opCtx, c, ch, vals, labels, m.opts.Timeout)
	} else {
		out, err = h.upgrade(opCtx, c, ch, vals, labels, m.opts.Timeout)
	}
	if err != nil {
		err = fmt.Errorf("helm %s %s/%s: %w", verb, c.Namespace, c.Release, err)
		m.setRelease(c, apitype.ReleaseFailed, err.Error(), nil)
		return nil, err
	}
	m.log.Info("release "+done, logging.KeyRelease, c.Release, logging.KeyNamespace, c.Namespace,
		"chart", ch.Metadata.Name, logging.KeyVersion, ch.Metadata.Version, logging.KeyRevision, out.Version, "why", why)
	return out, nil
}

func releaseInfo(rel *release.Release) *monitor.ReleaseInfo {
	info := &monitor.ReleaseInfo{Revision: rel.Version}
	if rel.Chart != nil && rel.Chart.Metadata != nil {
		info.Chart, info.Version = rel.Chart.Metadata.Name, rel.Chart.Metadata.Version
	}
	return info
}

// drift says why the deployed release differs from the desired one, or ""
// when it does not: then no Helm call is made. Helm's own record (chart,
// version, values) is the reference; the agent keeps no second copy.
func drift(rel *release.Release, src source, ch *chart.Chart, digest string, vals map[string]any) string {
	if rel.Info == nil || rel.Info.Status != release.StatusDeployed {
		status := "unknown"
		if rel.Info != nil {
			status = rel.Info.Status.String()
		}
		return "last revision is " + status
	}
	if rel.Chart == nil || rel.Chart.Metadata == nil {
		return "release has no chart record"
	}
	name, version := src.chartName(), src.Version
	if ch != nil {
		name, version = ch.Metadata.Name, ch.Metadata.Version
	}
	got := rel.Chart.Metadata
	switch {
	case got.Name != name:
		return fmt.Sprintf("chart %s → %s", got.Name, name)
	case version != "" && got.Version != version:
		return fmt.Sprintf("chart version %s → %s", got.Version, version)
	case digest != "" && rel.Labels[labelChartDigest] != digest:
		return "chart content changed"
	case valuesHash(rel.Config) != valuesHash(vals):
		return "values changed"
	}
	return ""
}

// recover handles a release that a crash or a failed attempt left behind:
// pending-* with an earlier good revision is rolled back to it; pending-* or
// failed without one is uninstalled so that it is installed afresh. A failed
// release with a good revision is left for the upgrade that follows.
func (m *Engine) recover(c *Component, h *helmEnv, rel *release.Release) (*release.Release, error) {
	if rel == nil || rel.Info == nil {
		return rel, nil
	}
	st := rel.Info.Status
	if !st.IsPending() && st != release.StatusFailed && st != release.StatusUninstalling {
		return rel, nil
	}
	hist, err := h.history(c.Namespace, c.Release)
	if err != nil {
		return nil, fmt.Errorf("read history of %s/%s: %w", c.Namespace, c.Release, err)
	}
	var good *release.Release
	for _, r := range hist {
		if r.Version < rel.Version && (r.Info.Status == release.StatusDeployed || r.Info.Status == release.StatusSuperseded) &&
			(good == nil || r.Version > good.Version) {
			good = r
		}
	}
	switch {
	case st == release.StatusFailed && good != nil:
		m.log.Warn("release failed at its last revision; upgrading it again", logging.KeyRelease, c.Release,
			logging.KeyNamespace, c.Namespace, logging.KeyRevision, rel.Version, "last_good_revision", good.Version)
		return rel, nil
	case st.IsPending() && good != nil:
		m.log.Warn("release was left "+st.String()+" (an interrupted Helm action); rolling back", logging.KeyRelease, c.Release,
			logging.KeyNamespace, c.Namespace, logging.KeyRevision, rel.Version, "to_revision", good.Version)
		m.setRelease(c, apitype.ReleaseInstalling, fmt.Sprintf("recovering from %s: rolling back to revision %d", st, good.Version), nil)
		// Helm refuses to act on a pending release; mark it failed first.
		if err := h.markFailed(rel, "interrupted; marked failed by pipeops-agent"); err != nil {
			return nil, fmt.Errorf("mark %s/%s failed: %w", c.Namespace, c.Release, err)
		}
		if err := h.rollback(c.Namespace, c.Release, good.Version, m.opts.Timeout); err != nil {
			return nil, fmt.Errorf("roll back %s/%s to revision %d: %w", c.Namespace, c.Release, good.Version, err)
		}
		return h.last(c.Namespace, c.Release)
	}
	m.log.Warn("release was left "+st.String()+" with no good revision; reinstalling", logging.KeyRelease, c.Release,
		logging.KeyNamespace, c.Namespace, logging.KeyRevision, rel.Version)
	m.setRelease(c, apitype.ReleaseInstalling, fmt.Sprintf("recovering from %s: reinstalling", st), nil)
	if err := h.uninstall(c.Namespace, c.Release, m.opts.Timeout); err != nil {
		return nil, fmt.Errorf("uninstall %s/%s left %s: %w", c.Namespace, c.Release, st, err)
	}
	return nil, nil
}

// foreignIngressClass names an IngressClass that some other controller
// owns, or returns "" when Traefik may be installed. The agent never removes
// a foreign controller (protocol.md §13.27).
func foreignIngressClass(classes []networkingv1.IngressClass, release, namespace string) string {
	for _, ic := range classes {
		a := ic.Annotations
		if a["meta.helm.sh/release-name"] == release && a["meta.helm.sh/release-namespace"] == namespace {
			continue
		}
		return fmt.Sprintf("the cluster already has an ingress controller (IngressClass %s, controller %s)", ic.Name, ic.Spec.Controller)
	}
	return ""
}

// dig reads a nested value of Helm values ("a", "b" → v["a"]["b"]).
func dig(v map[string]any, path ...string) any {
	var cur any = v
	for _, p := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[p]
	}
	return cur
}
