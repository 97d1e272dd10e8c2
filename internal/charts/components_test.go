package charts

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
)

func dynClient(t *testing.T, h *harness) dynamic.Interface {
	t.Helper()
	d, err := dynamic.NewForConfig(h.env.Config)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func crdAnnotations(t *testing.T, d dynamic.Interface, name string) (map[string]string, string) {
	t.Helper()
	u, err := d.Resource(crdGVR).Get(ctxFor(t, 10*time.Second), name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("CRD %s: %v", name, err)
	}
	return u.GetAnnotations(), u.GetResourceVersion()
}

// waitCRDGone waits until no CRD of this name exists. CRDs are cluster-wide
// and their deletion is asynchronous (instances are removed first), so a
// test that creates one another test's uninstall deleted waits it out.
func waitCRDGone(t *testing.T, d dynamic.Interface, name string) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := d.Resource(crdGVR).Get(ctx, name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		t.Fatalf("CRD %s still exists after a minute: %v", name, err)
	}
}

// setCRDVersion rewrites a CRD's version stamp as another operator would
// have left it, without the agent's bundle mark.
func setCRDVersion(t *testing.T, d dynamic.Interface, name, version string) {
	t.Helper()
	patch := `{"metadata":{"annotations":{"` + annotationOperatorVersion + `":"` + version + `","` + annotationCRDBundle + `":null}}}`
	if _, err := d.Resource(crdGVR).Patch(ctxFor(t, 10*time.Second), name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

func TestPrometheusCRDsArePinnedAppliedServerSideFirstUpgradedInPlaceAndNeverDeleted(t *testing.T) {
	h := newHarness(t)
	h.opts.Components = h.opts.Components[1:2] // kube-prometheus-stack, whose stand-in has a ServiceMonitor
	d := dynClient(t, h)
	const sm = "servicemonitors.monitoring.coreos.com"
	t.Cleanup(func() { setCRDVersion(t, d, sm, PrometheusOperatorVersion) }) // the next run applies the bundle again

	m := h.manager(nil)
	mustRound(t, m)
	objs, _, err := prometheusCRDs()
	if err != nil || len(objs) != 10 {
		t.Fatalf("bundle: %d CRDs, %v; want prometheus-operator's 10", len(objs), err)
	}
	for _, o := range objs {
		u, err := d.Resource(crdGVR).Get(ctxFor(t, 10*time.Second), o.GetName(), metav1.GetOptions{})
		if err != nil {
			t.Fatalf("CRD %s not applied: %v", o.GetName(), err)
		}
		if u.GetAnnotations()[annotationOperatorVersion] != PrometheusOperatorVersion || !established(u) {
			t.Errorf("CRD %s: version %q, established %v", o.GetName(), u.GetAnnotations()[annotationOperatorVersion], established(u))
		}
		applied := false
		for _, mf := range u.GetManagedFields() {
			applied = applied || (mf.Manager == fieldManager && mf.Operation == metav1.ManagedFieldsOperationApply)
		}
		if !applied {
			t.Errorf("CRD %s is not server-side applied by %s", o.GetName(), fieldManager)
		}
	}
	if _, err := d.Resource(schema.GroupVersionResource{Group: "monitoring.coreos.com", Version: "v1", Resource: "servicemonitors"}).
		Namespace(h.env.Namespace).Get(ctxFor(t, 10*time.Second), "kube-prometheus-stack-prometheus", metav1.GetOptions{}); err != nil {
		t.Errorf("the chart's ServiceMonitor was not installed: %v", err)
	}
	if _, err := d.Resource(crdGVR).Get(ctxFor(t, 10*time.Second), "skipped.crds.test.pipeops.io", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the chart's own crds/ CRD reached the cluster (%v); want SkipCRDs", err)
	}
	if r := releaseState(m, "prometheus"); !strings.Contains(r.Reason, "prometheus-operator 0.70.0 CRDs") {
		t.Errorf("prometheus reason = %q; want it to name the CRDs", r.Reason)
	}

	// Unchanged: not sent again.
	_, rv := crdAnnotations(t, d, sm)
	mustRound(t, m)
	if _, rv2 := crdAnnotations(t, d, sm); rv2 != rv {
		t.Errorf("an unchanged round rewrote CRD %s", sm)
	}
	// An older operator's CRD is upgraded in place.
	setCRDVersion(t, d, sm, "0.60.0")
	mustRound(t, m)
	if a, _ := crdAnnotations(t, d, sm); a[annotationOperatorVersion] != PrometheusOperatorVersion {
		t.Errorf("CRD %s version after a round = %q; want it upgraded to %s", sm, a[annotationOperatorVersion], PrometheusOperatorVersion)
	}
	// A newer one is never downgraded.
	setCRDVersion(t, d, sm, "0.99.0")
	mustRound(t, m)
	if a, _ := crdAnnotations(t, d, sm); a[annotationOperatorVersion] != "0.99.0" {
		t.Errorf("CRD %s version after a round = %q; want the newer 0.99.0 kept", sm, a[annotationOperatorVersion])
	}
	if r := releaseState(m, "prometheus"); !strings.Contains(r.Reason, "kept newer "+sm+" (0.99.0)") {
		t.Errorf("prometheus reason = %q; want it to say the newer CRD was kept", r.Reason)
	}

	if err := m.Uninstall(ctxFor(t, time.Minute), func(apitype.MonitoringEvent) {}); err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if _, err := d.Resource(crdGVR).Get(ctxFor(t, 10*time.Second), o.GetName(), metav1.GetOptions{}); err != nil {
			t.Errorf("CRD %s after uninstall: %v; want it kept", o.GetName(), err)
		}
	}
}

func issuer(t *testing.T, d dynamic.Interface, name string) *unstructured.Unstructured {
	t.Helper()
	u, err := d.Resource(clusterIssuerGVR).Get(ctxFor(t, 10*time.Second), name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("ClusterIssuer %s: %v", name, err)
	}
	return u
}

func issuerSettings(u *unstructured.Unstructured) (server, email, class string) {
	server, _, _ = unstructured.NestedString(u.Object, "spec", "acme", "server")
	email, _, _ = unstructured.NestedString(u.Object, "spec", "acme", "email")
	solvers, _, _ := unstructured.NestedSlice(u.Object, "spec", "acme", "solvers")
	if len(solvers) == 1 {
		class, _, _ = unstructured.NestedString(solvers[0].(map[string]any), "http01", "ingress", "class")
	}
	return server, email, class
}

func TestCertManagerAndItsClusterIssuersUseTheTraefikTheAgentInstalled(t *testing.T) {
	h := newHarness(t)
	ns := h.env.Namespace
	h.opts.Components = []Component{
		{Name: "traefik", Release: "traefik", Namespace: ns, Chart: testChart("traefik")},
		{Name: "cert_manager", Release: "cert-manager", Namespace: ns, Chart: testChart("cert-manager")},
	}
	h.opts.ACMEEmail = "admin@pipeops.io"
	d := dynClient(t, h)
	m := h.manager(nil)
	t.Cleanup(func() { _ = m.Uninstall(context.Background(), func(apitype.MonitoringEvent) {}) })
	// cert-manager's webhook admits ClusterIssuers; until it answers, applying
	// them fails. This one never answers until the test removes it.
	fail := admissionregistrationv1.Fail
	none := admissionregistrationv1.SideEffectClassNone
	vwc := "cert-manager-webhook-" + ns
	path, timeout := "/validate", int32(1)
	if _, err := h.env.Client.AdmissionregistrationV1().ValidatingWebhookConfigurations().Create(ctxFor(t, 10*time.Second),
		&admissionregistrationv1.ValidatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: vwc},
			Webhooks: []admissionregistrationv1.ValidatingWebhook{{Name: "webhook.cert-manager.io", FailurePolicy: &fail, SideEffects: &none, TimeoutSeconds: &timeout,
				AdmissionReviewVersions: []string{"v1"},
				ClientConfig: admissionregistrationv1.WebhookClientConfig{Service: &admissionregistrationv1.ServiceReference{
					Namespace: ns, Name: "cert-manager-webhook", Path: &path}},
				Rules: []admissionregistrationv1.RuleWithOperations{{Operations: []admissionregistrationv1.OperationType{"CREATE", "UPDATE"},
					Rule: admissionregistrationv1.Rule{APIGroups: []string{"cert-manager.io"}, APIVersions: []string{"v1"}, Resources: []string{"clusterissuers"}}}},
			}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	deleteVWC := func() {
		_ = h.env.Client.AdmissionregistrationV1().ValidatingWebhookConfigurations().Delete(context.Background(), vwc, metav1.DeleteOptions{})
	}
	t.Cleanup(deleteVWC)
	events, unsub := m.Subscribe()
	defer unsub()
	roundDone := make(chan error, 1)
	go func() { roundDone <- m.RunRound(ctxFor(t, 90*time.Second)) }()
	waited := false
	for !waited {
		select {
		case ev := <-events:
			waited = ev.Release.Component == "cert_manager" && strings.Contains(ev.Release.Reason, "waiting for cert-manager's webhook")
		case err := <-roundDone:
			t.Fatalf("round ended (%v) without waiting for the webhook", err)
		case <-time.After(60 * time.Second):
			t.Fatal("cert_manager never reported waiting for the webhook")
		}
	}
	deleteVWC() // the webhook "comes up"
	if err := <-roundDone; err != nil {
		t.Fatalf("round: %v", err)
	}
	requireAllReady(t, m)

	class := "traefik-" + ns
	for _, name := range []string{"letsencrypt-prod", "letsencrypt-production"} {
		server, email, got := issuerSettings(issuer(t, d, name))
		if server != "https://acme-v02.api.letsencrypt.org/directory" || email != "admin@pipeops.io" || got != class {
			t.Errorf("ClusterIssuer %s: server %q, email %q, class %q; want ACME production, admin@pipeops.io, %s", name, server, email, got, class)
		}
	}
	if r := releaseState(m, "cert_manager"); !strings.Contains(r.Reason, "via IngressClass "+class) {
		t.Errorf("cert_manager reason = %q", r.Reason)
	}
	dep, err := h.env.Client.AppsV1().Deployments(ns).Get(ctxFor(t, 10*time.Second), "cert-manager", metav1.GetOptions{})
	if err != nil || dep.Spec.Template.Spec.Containers[0].Resources.Requests.Memory().String() != "256Mi" {
		t.Errorf("cert-manager Deployment = %v; want the large profile's requests", err)
	}

	// A new e-mail updates the agent's issuers once.
	m = h.manager(func(o *Options) { o.ACMEEmail = "ops@example.com" })
	mustRound(t, m)
	if _, email, _ := issuerSettings(issuer(t, d, "letsencrypt-prod")); email != "ops@example.com" {
		t.Errorf("ClusterIssuer e-mail = %q after the change; want ops@example.com", email)
	}
	rv := issuer(t, d, "letsencrypt-prod").GetResourceVersion()
	mustRound(t, m)
	if got := issuer(t, d, "letsencrypt-prod").GetResourceVersion(); got != rv {
		t.Errorf("an unchanged round rewrote the ClusterIssuer")
	}

	if err := m.Uninstall(ctxFor(t, time.Minute), func(apitype.MonitoringEvent) {}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Resource(clusterIssuerGVR).Get(ctxFor(t, 10*time.Second), "letsencrypt-prod", metav1.GetOptions{}); err == nil {
		t.Errorf("the agent's ClusterIssuer survived monitoring uninstall")
	}
}

func TestAForeignCertManagerIsSkippedAndGetsTheIssuersOnTheDefaultIngressClass(t *testing.T) {
	h := newHarness(t)
	ns := h.env.Namespace
	ctx := ctxFor(t, time.Minute)
	cs, d := h.env.Client, dynClient(t, h)
	// Someone else's cert-manager: its CRDs (not Helm's) and Deployment, an
	// ingress-nginx default IngressClass, and their own letsencrypt-production.
	crd := func(kind, plural, scope string) *unstructured.Unstructured {
		return &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
			"metadata": map[string]any{"name": plural + ".cert-manager.io"},
			"spec": map[string]any{"group": "cert-manager.io", "scope": scope,
				"names": map[string]any{"kind": kind, "plural": plural, "singular": strings.ToLower(kind), "listKind": kind + "List"},
				"versions": []any{map[string]any{"name": "v1", "served": true, "storage": true,
					"schema": map[string]any{"openAPIV3Schema": map[string]any{"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}},
		}}
	}
	for _, c := range []*unstructured.Unstructured{crd("ClusterIssuer", "clusterissuers", "Cluster"), crd("Certificate", "certificates", "Namespaced")} {
		name := c.GetName()
		waitCRDGone(t, d, name) // another test's uninstall may still be deleting it
		if _, err := d.Resource(crdGVR).Create(ctx, c, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = d.Resource(crdGVR).Delete(context.Background(), name, metav1.DeleteOptions{})
			waitCRDGone(t, d, name)
		})
	}
	labels := map[string]string{"app.kubernetes.io/name": "cert-manager"}
	one := int32(1)
	if _, err := cs.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "cert-manager", Labels: labels},
		Spec: appsv1.DeploymentSpec{Replicas: &one, Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "quay.io/jetstack/cert-manager-controller:v1.14.0"}}}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cs.AppsV1().Deployments(ns).Delete(context.Background(), "cert-manager", metav1.DeleteOptions{})
	})
	icName := "nginx-" + ns
	if _, err := cs.NetworkingV1().IngressClasses().Create(ctx, &networkingv1.IngressClass{ObjectMeta: metav1.ObjectMeta{Name: icName,
		Annotations: map[string]string{"ingressclass.kubernetes.io/is-default-class": "true"}},
		Spec: networkingv1.IngressClassSpec{Controller: "k8s.io/ingress-nginx"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cs.NetworkingV1().IngressClasses().Delete(context.Background(), icName, metav1.DeleteOptions{})
	})
	theirs := clusterIssuer("letsencrypt-production", "them@example.com", "nginx")
	theirs.SetLabels(nil)
	if _, err := d.Resource(clusterIssuerGVR).Create(ctx, theirs, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	h.opts.Components = []Component{{Name: "cert_manager", Release: "cert-manager", Namespace: "cert-manager", Chart: testChart("cert-manager")}}
	h.opts.ACMEEmail = "admin@pipeops.io"
	m := h.manager(nil)
	mustRound(t, m)
	r := releaseState(m, "cert_manager")
	for _, want := range []string{"cert-manager already runs (Deployment " + ns + "/cert-manager)", "via IngressClass " + icName,
		"kept the existing letsencrypt-production (not the agent's)"} {
		if r.State != apitype.ReleaseSkipped || !strings.Contains(r.Reason, want) {
			t.Errorf("cert_manager = %s (%s); want skipped saying %q", r.State, r.Reason, want)
		}
	}
	if c := m.Calls(); c.Mutations() != 0 {
		t.Errorf("helm calls = %+v; want none next to a foreign cert-manager", c)
	}
	if _, _, class := issuerSettings(issuer(t, d, "letsencrypt-prod")); class != icName {
		t.Errorf("letsencrypt-prod class = %q; want the default IngressClass %s", class, icName)
	}
	if _, email, _ := issuerSettings(issuer(t, d, "letsencrypt-production")); email != "them@example.com" {
		t.Errorf("their letsencrypt-production was changed (e-mail %q)", email)
	}
	if err := m.Uninstall(ctxFor(t, time.Minute), func(apitype.MonitoringEvent) {}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Resource(clusterIssuerGVR).Get(ctxFor(t, 10*time.Second), "letsencrypt-prod", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the agent's letsencrypt-prod after uninstall: %v; want it deleted", err)
	}
	issuer(t, d, "letsencrypt-production") // theirs stays
}

func TestTheCoreDNSRewriteIsARoundStepAndMonitoringUninstallUndoesIt(t *testing.T) {
	h := newHarness(t)
	ns := h.env.Namespace
	orig, err := os.ReadFile(filepath.Join("..", "coredns", "testdata", "kubeadm.Corefile"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.env.Client.CoreV1().ConfigMaps(ns).Create(ctxFor(t, 10*time.Second), &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "coredns"}, Data: map[string]string{"Corefile": string(orig)}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.opts.Components = []Component{{Name: "coredns", Release: "coredns", Namespace: ns}, h.opts.Components[0]}
	m := h.manager(nil)
	mustRound(t, m)
	requireAllReady(t, m)
	corefile := func() string {
		cm, err := h.env.Client.CoreV1().ConfigMaps(ns).Get(ctxFor(t, 10*time.Second), "coredns", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return cm.Data["Corefile"]
	}
	// The harness's cluster domain is corp.internal.
	if got := corefile(); !strings.Contains(got, `name regex (.+)\.pipeops\.internal\.$ {1}.corp.internal.`) {
		t.Fatalf("Corefile after a round:\n%s", got)
	}
	if r := releaseState(m, "coredns"); r.Reason != "*.pipeops.internal resolves as *.corp.internal (Corefile)" {
		t.Errorf("coredns reason = %q", r.Reason)
	}
	if err := m.Uninstall(ctxFor(t, time.Minute), func(apitype.MonitoringEvent) {}); err != nil {
		t.Fatal(err)
	}
	if got := corefile(); got != string(orig) {
		t.Errorf("Corefile after monitoring uninstall is not the original:\n%s", got)
	}
	if r := releaseState(m, "coredns"); r.State != apitype.ReleaseUninstalled {
		t.Errorf("coredns after uninstall = %s", r.State)
	}
}
