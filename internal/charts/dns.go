package charts

import (
	"context"
	"errors"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/kubernetes"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/coredns"
	"github.com/pipeops/pipeops-vm-agent/internal/logging"
	"github.com/pipeops/pipeops-vm-agent/internal/monitor"
)

// dnsTarget is the CoreDNS the coredns component edits: its ConfigMap is
// the component's release name in its namespace (kube-system/coredns).
func (m *Engine) dnsTarget(c *Component) coredns.Target {
	t := coredns.DefaultTarget(m.opts.ClusterDomain)
	if c.Namespace != "" {
		t.Namespace = c.Namespace
	}
	if c.Release != "" {
		t.ConfigMap = c.Release
	}
	return t
}

// reconcileDNS puts the *.pipeops.internal rewrite in place (step 1 of
// protocol.md §12). A cluster without a CoreDNS ConfigMap is skipped.
func (m *Engine) reconcileDNS(ctx context.Context, c *Component, cs kubernetes.Interface) error {
	t := m.dnsTarget(c)
	res, err := coredns.Apply(ctx, cs, t)
	switch {
	case apierrors.IsNotFound(err):
		m.setRelease(c, apitype.ReleaseSkipped, fmt.Sprintf("no CoreDNS ConfigMap %s/%s: the cluster's DNS is not CoreDNS", t.Namespace, t.ConfigMap), nil)
		return nil
	case errors.Is(err, coredns.ErrNoKubernetesBlock):
		m.setRelease(c, apitype.ReleaseSkipped, err.Error(), nil)
		return nil
	case err != nil:
		m.setRelease(c, apitype.ReleaseFailed, err.Error(), nil)
		return err
	}
	if res.Changed {
		m.log.Info("CoreDNS rewrite applied", "form", res.Form, "restarted", res.Restarted,
			logging.KeyRelease, t.ConfigMap, logging.KeyNamespace, t.Namespace)
	}
	m.setRelease(c, apitype.ReleaseReady, res.String(), nil)
	return nil
}

// undoDNS takes the rewrite out again (monitoring uninstall).
func (m *Engine) undoDNS(ctx context.Context, c *Component, cs kubernetes.Interface) error {
	m.setRelease(c, apitype.ReleaseUninstalling, "", nil)
	t := m.dnsTarget(c)
	if _, err := coredns.Undo(ctx, cs, t); err != nil {
		m.setRelease(c, apitype.ReleaseFailed, err.Error(), nil)
		return err
	}
	m.log.Info("CoreDNS rewrite removed", logging.KeyRelease, t.ConfigMap, logging.KeyNamespace, t.Namespace)
	m.setRelease(c, apitype.ReleaseUninstalled, "rewrite removed; \"pipeopsctl monitoring install\" puts it back", &monitor.ReleaseInfo{})
	return nil
}
