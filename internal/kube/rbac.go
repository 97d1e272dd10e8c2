package kube

import (
	"context"
	"fmt"
	"maps"
	"reflect"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Names of the agent's own objects (protocol.md §14.3).
const (
	ServiceAccountName   = "pipeops-agent"
	ClusterRoleName      = "pipeops-agent"
	MonitoringRoleName   = "pipeops-agent-monitoring-proxy"
	TokenSecretName      = "pipeops-agent-token" // prefix; the name is generated
	tokenLabel           = "pipeops.io/token-for"
	ManagedByLabel       = "app.kubernetes.io/managed-by"
	ManagedByValue       = "pipeops-agent"
	DefaultNamespace     = "pipeops-system"
	DefaultMonitoringNS  = "pipeops-monitoring"
	serviceAccountAnnKey = "kubernetes.io/service-account.name"
)

var (
	crud  = []string{"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}
	read  = []string{"get", "list", "watch"}
	proxy = []string{"get", "create", "update", "patch", "delete"}
)

// ClusterRoleRules is what the ServiceAccount may do cluster-wide: what the
// control plane does through the proxy (deploy and operate applications,
// provision namespaces, logs, exec, port-forward, service proxy) and what
// the agent itself reads (telemetry, ingress watching, Service resolution).
// docs/kubernetes.md has the same table with the reason for each row; keep
// them in step. Deliberately absent: RBAC objects, CRDs, admission webhooks
// and nodes write access, which would make the token cluster-admin in all
// but name.
func ClusterRoleRules() []rbacv1.PolicyRule {
	return []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"namespaces"}, Verbs: []string{"get", "list", "watch", "create", "update", "patch", "delete"}},
		{APIGroups: []string{""}, Resources: []string{"pods", "services", "configmaps", "secrets", "serviceaccounts",
			"persistentvolumeclaims", "endpoints", "resourcequotas", "limitranges"}, Verbs: crud},
		{APIGroups: []string{""}, Resources: []string{"pods/exec", "pods/portforward", "pods/attach"}, Verbs: []string{"get", "create"}},
		{APIGroups: []string{""}, Resources: []string{"pods/log", "pods/status", "services/status", "events"}, Verbs: read},
		{APIGroups: []string{""}, Resources: []string{"services/proxy"}, Verbs: proxy},
		{APIGroups: []string{""}, Resources: []string{"nodes", "persistentvolumes"}, Verbs: read},
		{APIGroups: []string{"apps"}, Resources: []string{"deployments", "statefulsets", "daemonsets", "replicasets",
			"deployments/scale", "statefulsets/scale", "replicasets/scale"}, Verbs: crud},
		{APIGroups: []string{"batch"}, Resources: []string{"jobs", "cronjobs"}, Verbs: crud},
		{APIGroups: []string{"autoscaling"}, Resources: []string{"horizontalpodautoscalers"}, Verbs: crud},
		{APIGroups: []string{"policy"}, Resources: []string{"poddisruptionbudgets"}, Verbs: crud},
		{APIGroups: []string{"networking.k8s.io"}, Resources: []string{"ingresses", "networkpolicies"}, Verbs: crud},
		{APIGroups: []string{"networking.k8s.io"}, Resources: []string{"ingresses/status", "ingressclasses"}, Verbs: read},
		{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: read},
		{APIGroups: []string{"storage.k8s.io"}, Resources: []string{"storageclasses"}, Verbs: read},
		{APIGroups: []string{"metrics.k8s.io"}, Resources: []string{"pods", "nodes"}, Verbs: []string{"get", "list"}},
		{APIGroups: []string{"traefik.io", "traefik.containo.us"}, Resources: []string{"ingressroutes", "ingressroutetcps",
			"ingressrouteudps", "middlewares", "middlewaretcps", "serverstransports", "tlsoptions", "tlsstores", "traefikservices"}, Verbs: crud},
	}
}

// MonitoringRoleRules is the separate, namespaced grant for the monitoring
// stack: Grafana and Prometheus are reached through the API server's service
// proxy (protocol.md §12), so the token needs services/proxy there. It is a
// Role so that removing monitoring removes the grant with it.
func MonitoringRoleRules() []rbacv1.PolicyRule {
	return []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"services/proxy"}, Verbs: proxy},
		{APIGroups: []string{""}, Resources: []string{"services", "endpoints", "pods"}, Verbs: read},
	}
}

func managedLabels() map[string]string { return map[string]string{ManagedByLabel: ManagedByValue} }

// hasLabels reports whether have contains every label of want.
func hasLabels(have, want map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

func withLabels(have map[string]string) map[string]string {
	out := maps.Clone(have)
	if out == nil {
		out = map[string]string{}
	}
	maps.Copy(out, managedLabels())
	return out
}

// Names places the agent's objects. The zero fields take the defaults;
// tests on a shared cluster use their own names.
type Names struct {
	Namespace           string // pipeops-system: ServiceAccount and token Secret
	ClusterRole         string // pipeops-agent: ClusterRole and ClusterRoleBinding
	MonitoringNamespace string // "" (no monitoring Role) or pipeops-monitoring
}

func (n Names) withDefaults() Names {
	if n.Namespace == "" {
		n.Namespace = DefaultNamespace
	}
	if n.ClusterRole == "" {
		n.ClusterRole = ClusterRoleName
	}
	return n
}

// Bootstrap creates or repairs the agent's namespace, ServiceAccount,
// ClusterRole and binding and, when a monitoring namespace is named, the
// monitoring Role and RoleBinding there. It is idempotent: objects that are
// already right are not written (their resourceVersion does not move).
// It returns the number of objects it created or updated.
func Bootstrap(ctx context.Context, cs kubernetes.Interface, n Names) (int, error) {
	n = n.withDefaults()
	ns, monitoringNS := n.Namespace, n.MonitoringNamespace
	changed := 0
	count := func(c bool, err error) error {
		if c {
			changed++
		}
		return err
	}
	if err := count(ensureNamespace(ctx, cs, ns)); err != nil {
		return changed, err
	}
	if err := count(ensureServiceAccount(ctx, cs, ns)); err != nil {
		return changed, err
	}
	if err := count(ensureClusterRole(ctx, cs, n.ClusterRole)); err != nil {
		return changed, err
	}
	if err := count(ensureClusterRoleBinding(ctx, cs, n.ClusterRole, ns)); err != nil {
		return changed, err
	}
	if monitoringNS != "" {
		if err := count(ensureNamespace(ctx, cs, monitoringNS)); err != nil {
			return changed, err
		}
		if err := count(ensureRole(ctx, cs, monitoringNS)); err != nil {
			return changed, err
		}
		if err := count(ensureRoleBinding(ctx, cs, monitoringNS, ns)); err != nil {
			return changed, err
		}
	}
	return changed, nil
}

func ensureNamespace(ctx context.Context, cs kubernetes.Interface, name string) (bool, error) {
	_, err := cs.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
	if err == nil {
		return false, nil // a namespace someone else made is fine as it is
	}
	if !apierrors.IsNotFound(err) {
		return false, fmt.Errorf("get namespace %s: %w", name, err)
	}
	_, err = cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: managedLabels()}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return false, fmt.Errorf("create namespace %s: %w", name, err)
	}
	return err == nil, nil
}

func ensureServiceAccount(ctx context.Context, cs kubernetes.Interface, ns string) (bool, error) {
	api := cs.CoreV1().ServiceAccounts(ns)
	cur, err := api.Get(ctx, ServiceAccountName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = api.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: ServiceAccountName, Labels: managedLabels()}}, metav1.CreateOptions{})
		if err != nil {
			return false, fmt.Errorf("create serviceaccount %s/%s: %w", ns, ServiceAccountName, err)
		}
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("get serviceaccount %s/%s: %w", ns, ServiceAccountName, err)
	}
	if hasLabels(cur.Labels, managedLabels()) {
		return false, nil
	}
	cur.Labels = withLabels(cur.Labels)
	if _, err := api.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		return false, fmt.Errorf("update serviceaccount %s/%s: %w", ns, ServiceAccountName, err)
	}
	return true, nil
}

func ensureClusterRole(ctx context.Context, cs kubernetes.Interface, name string) (bool, error) {
	api := cs.RbacV1().ClusterRoles()
	want := ClusterRoleRules()
	cur, err := api.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = api.Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: managedLabels()}, Rules: want}, metav1.CreateOptions{})
		if err != nil {
			return false, fmt.Errorf("create clusterrole %s: %w", name, err)
		}
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("get clusterrole %s: %w", name, err)
	}
	if reflect.DeepEqual(cur.Rules, want) && hasLabels(cur.Labels, managedLabels()) {
		return false, nil
	}
	cur.Rules, cur.Labels = want, withLabels(cur.Labels)
	if _, err := api.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		return false, fmt.Errorf("update clusterrole %s: %w", name, err)
	}
	return true, nil
}

func saSubject(ns string) []rbacv1.Subject {
	return []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: ServiceAccountName, Namespace: ns}}
}

func ensureClusterRoleBinding(ctx context.Context, cs kubernetes.Interface, name, ns string) (bool, error) {
	api := cs.RbacV1().ClusterRoleBindings()
	ref := rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: name}
	want := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: managedLabels()}, RoleRef: ref, Subjects: saSubject(ns)}
	cur, err := api.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		if _, err := api.Create(ctx, want, metav1.CreateOptions{}); err != nil {
			return false, fmt.Errorf("create clusterrolebinding %s: %w", name, err)
		}
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("get clusterrolebinding %s: %w", name, err)
	}
	if cur.RoleRef == ref && reflect.DeepEqual(cur.Subjects, want.Subjects) && hasLabels(cur.Labels, managedLabels()) {
		return false, nil
	}
	if cur.RoleRef != ref { // roleRef is immutable: replace the binding
		if err := api.Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			return false, fmt.Errorf("replace clusterrolebinding %s: %w", name, err)
		}
		if _, err := api.Create(ctx, want, metav1.CreateOptions{}); err != nil {
			return false, fmt.Errorf("create clusterrolebinding %s: %w", name, err)
		}
		return true, nil
	}
	cur.Subjects, cur.Labels = want.Subjects, withLabels(cur.Labels)
	if _, err := api.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		return false, fmt.Errorf("update clusterrolebinding %s: %w", name, err)
	}
	return true, nil
}

func ensureRole(ctx context.Context, cs kubernetes.Interface, ns string) (bool, error) {
	api := cs.RbacV1().Roles(ns)
	want := MonitoringRoleRules()
	cur, err := api.Get(ctx, MonitoringRoleName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = api.Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: MonitoringRoleName, Labels: managedLabels()}, Rules: want}, metav1.CreateOptions{})
		if err != nil {
			return false, fmt.Errorf("create role %s/%s: %w", ns, MonitoringRoleName, err)
		}
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("get role %s/%s: %w", ns, MonitoringRoleName, err)
	}
	if reflect.DeepEqual(cur.Rules, want) && hasLabels(cur.Labels, managedLabels()) {
		return false, nil
	}
	cur.Rules, cur.Labels = want, withLabels(cur.Labels)
	if _, err := api.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		return false, fmt.Errorf("update role %s/%s: %w", ns, MonitoringRoleName, err)
	}
	return true, nil
}

func ensureRoleBinding(ctx context.Context, cs kubernetes.Interface, ns, saNS string) (bool, error) {
	api := cs.RbacV1().RoleBindings(ns)
	ref := rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: MonitoringRoleName}
	want := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: MonitoringRoleName, Labels: managedLabels()}, RoleRef: ref, Subjects: saSubject(saNS)}
	cur, err := api.Get(ctx, MonitoringRoleName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		if _, err := api.Create(ctx, want, metav1.CreateOptions{}); err != nil {
			return false, fmt.Errorf("create rolebinding %s/%s: %w", ns, MonitoringRoleName, err)
		}
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("get rolebinding %s/%s: %w", ns, MonitoringRoleName, err)
	}
	if cur.RoleRef == ref && reflect.DeepEqual(cur.Subjects, want.Subjects) && hasLabels(cur.Labels, managedLabels()) {
		return false, nil
	}
	if cur.RoleRef != ref {
		if err := api.Delete(ctx, MonitoringRoleName, metav1.DeleteOptions{}); err != nil {
			return false, fmt.Errorf("replace rolebinding %s/%s: %w", ns, MonitoringRoleName, err)
		}
		_, err := api.Create(ctx, want, metav1.CreateOptions{})
		if err != nil {
			return false, fmt.Errorf("create rolebinding %s/%s: %w", ns, MonitoringRoleName, err)
		}
		return true, nil
	}
	cur.Subjects, cur.Labels = want.Subjects, withLabels(cur.Labels)
	if _, err := api.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		return false, fmt.Errorf("update rolebinding %s/%s: %w", ns, MonitoringRoleName, err)
	}
	return true, nil
}
