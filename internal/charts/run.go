package charts

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"helm.sh/helm/v3/pkg/release"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/logging"
	"github.com/pipeops/pipeops-vm-agent/internal/monitor"
)

// Round reconciles every component in order (monitor.Backend). Each step is
// non-fatal: a release that fails does not stop the next one.
func (m *Engine) Round(ctx context.Context, s monitor.Sink) (monitor.Result, error) {
	m.sink = s
	h, cs, err := m.env(ctx)
	if err != nil {
		return monitor.Result{}, monitor.Pending(s, m.opts.Components, monitor.NoAPI("round", err))
	}
	f, err := m.gatherFacts(ctx, cs)
	if err != nil {
		return monitor.Result{}, monitor.Pending(s, m.opts.Components, err)
	}
	res := monitor.Result{Profile: f.Profile}
	var errs []error
	ready := map[string]*release.Release{}
	m.skipped, m.notes = map[string]string{}, map[string]string{}
	for i := range m.opts.Components {
		c := &m.opts.Components[i]
		var rel *release.Release
		if c.Name == "coredns" {
			err = m.reconcileDNS(ctx, c, cs)
		} else {
			rel, err = m.reconcile(ctx, c, f, h, cs)
		}
		if err == nil && c.Name == "cert_manager" {
			err = m.certManagerIssuers(ctx, c, rel, ready["traefik"], cs)
		}
		if ctx.Err() != nil {
			return res, ctx.Err()
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s/%s: %w", c.Namespace, c.Release, err))
			continue
		}
		if rel != nil {
			ready[c.Name] = rel
		}
	}
	res.Endpoints, res.Complete = m.endpoints(ready), true
	return res, errors.Join(errs...)
}

// endpoints are the advertised endpoints of the ready components.
func (m *Engine) endpoints(ready map[string]*release.Release) []Endpoint {
	var eps []Endpoint
	add := func(name, comp string) {
		c, rel := m.component(comp), ready[comp]
		if c == nil || rel == nil {
			return
		}
		if e, ok := m.endpointFor(name, c, rel.Manifest); ok {
			eps = append(eps, e)
		}
	}
	add("prometheus", "prometheus")
	if m.opts.Grafana {
		add("grafana", "prometheus")
	}
	add("loki", "loki")
	return eps
}

// Uninstall removes every release of the stack, in reverse order
// (monitor.Backend), the agent's ClusterIssuers and the CoreDNS rewrite.
// Namespaces, CRDs and PersistentVolumeClaims stay: deleting the
// prometheus-operator CRDs would delete every user's monitors.
func (m *Engine) Uninstall(ctx context.Context, s monitor.Sink) error {
	m.sink = s
	h, cs, err := m.env(ctx)
	if err != nil {
		return monitor.NoAPI("uninstall", err)
	}
	var errs []error
	for _, c := range slices.Backward(m.opts.Components) {
		c := &c
		switch c.Name {
		case "coredns":
			if err := m.undoDNS(ctx, c, cs); err != nil {
				errs = append(errs, fmt.Errorf("undo the CoreDNS rewrite: %w", err))
			}
			continue
		case "cert_manager":
			if err := m.removeIssuers(ctx); err != nil {
				errs = append(errs, err)
			}
		}
		m.setRelease(c, apitype.ReleaseUninstalling, "", nil)
		if err := h.uninstall(c.Namespace, c.Release, m.opts.Timeout); err != nil {
			err = fmt.Errorf("helm uninstall %s/%s: %w", c.Namespace, c.Release, err)
			m.setRelease(c, apitype.ReleaseFailed, err.Error(), nil)
			errs = append(errs, err)
			continue
		}
		m.log.Info("release uninstalled", logging.KeyRelease, c.Release, logging.KeyNamespace, c.Namespace)
		m.setRelease(c, apitype.ReleaseUninstalled, "\"pipeopsctl monitoring install\" installs it again", &monitor.ReleaseInfo{})
	}
	return errors.Join(errs...)
}
