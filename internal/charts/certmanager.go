package charts

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"helm.sh/helm/v3/pkg/release"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
)

var clusterIssuerGVR = schema.GroupVersionResource{Group: "cert-manager.io", Version: "v1", Resource: "clusterissuers"}

// ClusterIssuers of protocol.md §12: ACME production, http01.
var clusterIssuers = []string{"letsencrypt-prod", "letsencrypt-production"}

const (
	acmeProduction = "https://acme-v02.api.letsencrypt.org/directory"
	// webhookWait bounds the wait for cert-manager's webhook, which must
	// admit the ClusterIssuers (protocol.md §12: 120 s).
	webhookWait = 120 * time.Second
	// annotationIssuerDigest is the issuer spec the agent last applied.
	annotationIssuerDigest = "pipeops.io/issuer-digest"
	certManagerCRD         = "certificates.cert-manager.io"
)

// foreignCertManager names a cert-manager that this release did not
// install, found by its Deployments or its CRDs, or returns "".
func (m *Engine) foreignCertManager(ctx context.Context, cs kubernetes.Interface, c *Component) (string, error) {
	deps, err := cs.AppsV1().Deployments("").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=cert-manager"})
	if err != nil {
		return "", fmt.Errorf("look for a running cert-manager: %w", err)
	}
	for _, d := range deps.Items {
		if !ownedBy(d.Annotations, c) {
			return fmt.Sprintf("cert-manager already runs (Deployment %s/%s)", d.Namespace, d.Name), nil
		}
	}
	crd, err := m.meta.Resource(crdGVR).Get(ctx, certManagerCRD, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return "", fmt.Errorf("look for cert-manager's CRDs: %w", err)
	case !ownedBy(crd.Annotations, c):
		return fmt.Sprintf("cert-manager's CRDs are installed already (%s)", certManagerCRD), nil
	}
	return "", nil
}

// ownedBy says whether Helm's ownership annotations name this release.
func ownedBy(ann map[string]string, c *Component) bool {
	return ann["meta.helm.sh/release-name"] == c.Release && ann["meta.helm.sh/release-namespace"] == c.Namespace
}

// issuerClass is the IngressClass the http01 solver uses: Traefik's when
// the agent installed it, else the cluster's default IngressClass, else its
// only one; "" when there is none.
func issuerClass(ctx context.Context, cs kubernetes.Interface, traefik *release.Release) (string, error) {
	if traefik != nil {
		for _, o := range objects(traefik.Manifest, traefik.Namespace) {
			if o.Kind == "IngressClass" {
				return o.Metadata.Name, nil
			}
		}
	}
	classes, err := cs.NetworkingV1().IngressClasses().List(ctx, metav1.ListOptions{})
	if err != nil {
		return "", fmt.Errorf("list ingress classes: %w", err)
	}
	for _, ic := range classes.Items {
		if ic.Annotations["ingressclass.kubernetes.io/is-default-class"] == "true" {
			return ic.Name, nil
		}
	}
	if len(classes.Items) == 1 {
		return classes.Items[0].Name, nil
	}
	return "", nil
}

// clusterIssuer is one ACME ClusterIssuer with an http01 solver.
func clusterIssuer(name, email, class string) *unstructured.Unstructured {
	solver := map[string]any{"http01": map[string]any{"ingress": map[string]any{}}}
	if class != "" {
		// "class" (not ingressClassName) works with every cert-manager
		// version a cluster may already run.
		solver["http01"] = map[string]any{"ingress": map[string]any{"class": class}}
	}
	spec := map[string]any{"acme": map[string]any{
		"server": acmeProduction, "email": email,
		"privateKeySecretRef": map[string]any{"name": name},
		"solvers":             []any{solver},
	}}
	b, _ := json.Marshal(spec)
	sum := sha256.Sum256(b)
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "cert-manager.io/v1", "kind": "ClusterIssuer",
		"metadata": map[string]any{"name": name,
			"labels":      map[string]any{labelManagedBy: "pipeops-agent", "app.kubernetes.io/managed-by": "pipeops-agent"},
			"annotations": map[string]any{annotationIssuerDigest: hex.EncodeToString(sum[:8])}},
		"spec": spec,
	}}
	return u
}

// ensureIssuers creates or updates the agent's ClusterIssuers. One of the
// same name that the agent did not create is left as it is. cert-manager's
// webhook admits ClusterIssuers, so applying is retried until it answers
// (webhookWait).
func (m *Engine) ensureIssuers(ctx context.Context, class string, waiting func(error)) (string, error) {
	if _, err := m.meta.Resource(crdGVR).Get(ctx, "clusterissuers.cert-manager.io", metav1.GetOptions{}); apierrors.IsNotFound(err) {
		return "", errors.New("the ClusterIssuer API (cert-manager.io/v1) is not served: cert-manager's CRDs are missing")
	} else if err != nil {
		return "", fmt.Errorf("look for the ClusterIssuer CRD: %w", err)
	}
	res := m.dyn.Resource(clusterIssuerGVR)
	var kept []string
	for _, name := range clusterIssuers {
		want := clusterIssuer(name, m.opts.ACMEEmail, class)
		cur, err := res.Get(ctx, name, metav1.GetOptions{})
		switch {
		case err == nil && cur.GetLabels()[labelManagedBy] != "pipeops-agent":
			kept = append(kept, name)
			continue
		case err == nil && cur.GetAnnotations()[annotationIssuerDigest] == want.GetAnnotations()[annotationIssuerDigest]:
			continue
		case err != nil && !apierrors.IsNotFound(err):
			return "", fmt.Errorf("read ClusterIssuer %s: %w", name, err)
		}
		if err := m.applyIssuer(ctx, want, waiting); err != nil {
			return "", err
		}
		m.log.Info("ClusterIssuer applied", "name", name, "ingress_class", class)
	}
	why := "ClusterIssuers " + strings.Join(clusterIssuers, ", ") + " (ACME, http01"
	if class != "" {
		why += " via IngressClass " + class
	}
	why += ")"
	if len(kept) > 0 {
		why += "; kept the existing " + strings.Join(kept, ", ") + " (not the agent's)"
	}
	return why, nil
}

func (m *Engine) applyIssuer(ctx context.Context, u *unstructured.Unstructured, waiting func(error)) error {
	ctx, cancel := context.WithTimeout(ctx, webhookWait)
	defer cancel()
	t := time.NewTicker(m.opts.PollInterval)
	defer t.Stop()
	for first := true; ; first = false {
		_, err := m.dyn.Resource(clusterIssuerGVR).Apply(ctx, u.GetName(), u, metav1.ApplyOptions{FieldManager: fieldManager, Force: true})
		if err == nil {
			return nil
		}
		if first && waiting != nil {
			waiting(err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("apply ClusterIssuer %s (cert-manager's webhook must admit it; waited %s): %w", u.GetName(), webhookWait, err)
		case <-t.C:
		}
	}
}

// removeIssuers deletes the agent's ClusterIssuers (monitoring uninstall).
func (m *Engine) removeIssuers(ctx context.Context) error {
	res := m.dyn.Resource(clusterIssuerGVR)
	var errs []error
	for _, name := range clusterIssuers {
		cur, err := res.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			if !apierrors.IsNotFound(err) && !apimeta.IsNoMatchError(err) {
				errs = append(errs, fmt.Errorf("read ClusterIssuer %s: %w", name, err))
			}
			continue
		}
		if cur.GetLabels()[labelManagedBy] != "pipeops-agent" {
			continue
		}
		uid := cur.GetUID()
		if err := res.Delete(ctx, name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}}); err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("delete ClusterIssuer %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// certManagerIssuers follows the cert_manager release: once it is ready,
// or when a cert-manager of someone else's runs, the ClusterIssuers are
// put in place and the component's state says which.
func (m *Engine) certManagerIssuers(ctx context.Context, c *Component, rel, traefik *release.Release, cs kubernetes.Interface) error {
	foreign, skipped := m.skipped[c.Name]
	if rel == nil && !skipped {
		return nil // not ready: the release's own state says why
	}
	class, err := issuerClass(ctx, cs, traefik)
	var note string
	if err == nil {
		note, err = m.ensureIssuers(ctx, class, func(err error) {
			st := apitype.ReleaseInstalling
			if skipped {
				st = apitype.ReleaseSkipped
			}
			m.setRelease(c, st, "waiting for cert-manager's webhook to admit the ClusterIssuers: "+err.Error(), nil)
		})
	}
	switch {
	case err != nil && skipped:
		m.setRelease(c, apitype.ReleaseSkipped, foreign+"; ClusterIssuers not applied: "+err.Error(), nil)
		return err
	case err != nil:
		m.setRelease(c, apitype.ReleaseFailed, "ClusterIssuers: "+err.Error(), nil)
		return err
	case skipped:
		m.setRelease(c, apitype.ReleaseSkipped, foreign+"; "+note, nil)
	default:
		m.setRelease(c, apitype.ReleaseReady, note, nil)
	}
	return nil
}
