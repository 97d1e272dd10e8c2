package kube

import (
	"context"
	"fmt"
	"maps"
	"reflect"
	"slices"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Names of the agent's own objects (protocol.md §14.3).
const (
	ServiceAccountName = "pipeops-agent"
	ClusterRoleName    = "pipeops-agent"
	MonitoringRoleName = "pipeops-agent-monitoring-proxy"
	// HARoleName is the Role (and RoleBinding) in the agent's namespace
	// that lets the ServiceAccount elect a leader (ha.enabled).
	HARoleName = "pipeops-agent-ha"
	// HASecretName is the shared cluster identity of an HA install, and
	// HALeaseName the leader Lease; candidate Leases carry HALeaseLabel.
	HASecretName         = "pipeops-agent-identity"
	HALeaseName          = "pipeops-agent-leader"
	HALeaseLabel         = "pipeops.io/ha-candidate"
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

// ClusterRoleRules is what the ServiceAccount may do cluster-wide, in every
// namespace including kube-system: read what the control plane shows and the
// agent watches (telemetry, Ingresses, Service resolution), and create and
// delete namespaces (the control plane provisions one per project; the
// token check of protocol.md §14.3 is "create namespaces"). Nothing here
// writes inside a namespace and nothing reads Secrets: ClusterRole rules
// cannot exclude kube-system, so every namespaced write lives in
// WorkloadRoleRules, granted namespace by namespace. docs/kubernetes.md has
// the same tables with the reason for each row; keep them in step.
// Deliberately absent everywhere: RBAC objects (escalate, bind), impersonate,
// serviceaccounts/token, CRDs, admission webhooks, CSRs, node writes and
// nodes/proxy, which would make the token cluster-admin in all but name.
func ClusterRoleRules() []rbacv1.PolicyRule {
	return []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"namespaces"}, Verbs: []string{"get", "list", "watch", "create", "delete"}},
		{APIGroups: []string{""}, Resources: []string{"pods", "pods/log", "pods/status", "services", "services/status", "endpoints",
			"configmaps", "serviceaccounts", "persistentvolumeclaims", "resourcequotas", "limitranges", "events"}, Verbs: read},
		{APIGroups: []string{""}, Resources: []string{"nodes", "persistentvolumes"}, Verbs: read},
		{APIGroups: []string{"apps"}, Resources: []string{"deployments", "statefulsets", "daemonsets", "replicasets"}, Verbs: read},
		{APIGroups: []string{"batch"}, Resources: []string{"jobs", "cronjobs"}, Verbs: read},
		{APIGroups: []string{"autoscaling"}, Resources: []string{"horizontalpodautoscalers"}, Verbs: read},
		{APIGroups: []string{"policy"}, Resources: []string{"poddisruptionbudgets"}, Verbs: read},
		{APIGroups: []string{"networking.k8s.io"}, Resources: []string{"ingresses", "ingresses/status", "networkpolicies", "ingressclasses"}, Verbs: read},
		{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: read},
		{APIGroups: []string{"storage.k8s.io"}, Resources: []string{"storageclasses"}, Verbs: read},
		{APIGroups: []string{"metrics.k8s.io"}, Resources: []string{"pods", "nodes"}, Verbs: []string{"get", "list"}},
		{APIGroups: []string{"traefik.io", "traefik.containo.us"}, Resources: traefikResources, Verbs: read},
	}
}

var traefikResources = []string{"ingressroutes", "ingressroutetcps", "ingressrouteudps", "middlewares", "middlewaretcps",
	"serverstransports", "tlsoptions", "tlsstores", "traefikservices"}

// WorkloadRoleRules is what the control plane does inside an application
// namespace: deploy and operate workloads (including their Secrets and
// ServiceAccounts), exec, attach, port-forward and the API server's service
// proxy. It is a ClusterRole granted only through a RoleBinding in each
// namespace that is not protected (ProtectedNamespaces): never in
// kube-system, kube-public, kube-node-lease, the agent's own namespace or
// the monitoring stack's, where creating a pod would let the token borrow a
// privileged ServiceAccount. Endpoints stay read-only: hand-written
// Endpoints would point the API server's service proxy at arbitrary hosts.
func WorkloadRoleRules() []rbacv1.PolicyRule {
	return []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"pods", "services", "configmaps", "secrets", "serviceaccounts",
			"persistentvolumeclaims", "resourcequotas", "limitranges"}, Verbs: crud},
		{APIGroups: []string{""}, Resources: []string{"pods/exec", "pods/portforward", "pods/attach"}, Verbs: []string{"get", "create"}},
		{APIGroups: []string{""}, Resources: []string{"services/proxy"}, Verbs: proxy},
		{APIGroups: []string{"apps"}, Resources: []string{"deployments", "statefulsets", "daemonsets", "replicasets",
			"deployments/scale", "statefulsets/scale", "replicasets/scale"}, Verbs: crud},
		{APIGroups: []string{"batch"}, Resources: []string{"jobs", "cronjobs"}, Verbs: crud},
		{APIGroups: []string{"autoscaling"}, Resources: []string{"horizontalpodautoscalers"}, Verbs: crud},
		{APIGroups: []string{"policy"}, Resources: []string{"poddisruptionbudgets"}, Verbs: crud},
		{APIGroups: []string{"networking.k8s.io"}, Resources: []string{"ingresses", "networkpolicies"}, Verbs: crud},
		{APIGroups: []string{"traefik.io", "traefik.containo.us"}, Resources: traefikResources, Verbs: crud},
	}
}

// SystemNamespaces are never granted WorkloadRoleRules, whatever the
// configuration says.
var SystemNamespaces = []string{"kube-system", "kube-public", "kube-node-lease"}

// ProtectedNamespaces are the namespaces where the ServiceAccount may only
// read: SystemNamespaces, the agent's own namespace (its token Secret), the
// monitoring namespace, and extra (kubernetes.protected_namespaces and the
// monitoring components' namespaces).
func ProtectedNamespaces(n Names, extra ...string) map[string]bool {
	n = n.withDefaults()
	out := map[string]bool{n.Namespace: true}
	for _, ns := range append(append(slices.Clone(SystemNamespaces), n.MonitoringNamespace), extra...) {
		if ns != "" {
			out[ns] = true
		}
	}
	return out
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

func withLabels(have, want map[string]string) map[string]string {
	out := maps.Clone(have)
	if out == nil {
		out = map[string]string{}
	}
	maps.Copy(out, want)
	return out
}

// Names places the agent's objects. The zero fields take the defaults;
// tests on a shared cluster use their own names.
type Names struct {
	Namespace           string // pipeops-system: ServiceAccount and token Secret
	ClusterRole         string // pipeops-agent: ClusterRole and ClusterRoleBinding
	MonitoringNamespace string // "" (no monitoring Role) or pipeops-monitoring
	// HA adds the Role for leader election and the shared identity
	// Secret in Namespace (ha.enabled).
	HA bool
}

// WorkloadRole names the ClusterRole of WorkloadRoleRules and the
// RoleBindings that grant it per namespace: <ClusterRole>-workloads.
func (n Names) WorkloadRole() string { return n.withDefaults().ClusterRole + "-workloads" }

// agentLabel marks every object granting this agent's ServiceAccount
// something, with the agent's namespace as value, so RemoveIdentity finds
// the RoleBindings in every namespace.
const agentLabel = "pipeops.io/agent-namespace"

func (n Names) labels() map[string]string {
	l := managedLabels()
	l[agentLabel] = n.withDefaults().Namespace
	return l
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
	if err := count(ensureClusterRole(ctx, cs, n.ClusterRole, ClusterRoleRules(), n.labels())); err != nil {
		return changed, err
	}
	if err := count(ensureClusterRole(ctx, cs, n.WorkloadRole(), WorkloadRoleRules(), n.labels())); err != nil {
		return changed, err
	}
	if err := count(ensureClusterRoleBinding(ctx, cs, n.ClusterRole, ns, n.labels())); err != nil {
		return changed, err
	}
	if n.HA {
		if err := count(ensureHA(ctx, cs, n)); err != nil {
			return changed, err
		}
	}
	if monitoringNS != "" {
		if err := count(ensureNamespace(ctx, cs, monitoringNS)); err != nil {
			return changed, err
		}
		if err := count(ensureRole(ctx, cs, monitoringNS, n.labels())); err != nil {
			return changed, err
		}
		ref := rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: MonitoringRoleName}
		if err := count(ensureRoleBinding(ctx, cs, monitoringNS, MonitoringRoleName, ref, ns, n.labels())); err != nil {
			return changed, err
		}
	}
	return changed, nil
}

// BindNamespace grants WorkloadRoleRules in ns through a RoleBinding named
// n.WorkloadRole(), unless ns is protected; it reports whether it wrote.
func BindNamespace(ctx context.Context, cs kubernetes.Interface, n Names, ns string, protected map[string]bool) (bool, error) {
	n = n.withDefaults()
	if protected[ns] {
		return false, fmt.Errorf("namespace %s is protected: the control plane may only read there", ns)
	}
	ref := rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: n.WorkloadRole()}
	return ensureRoleBinding(ctx, cs, ns, n.WorkloadRole(), ref, n.Namespace, n.labels())
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
	cur.Labels = withLabels(cur.Labels, managedLabels())
	if _, err := api.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		return false, fmt.Errorf("update serviceaccount %s/%s: %w", ns, ServiceAccountName, err)
	}
	return true, nil
}

func ensureClusterRole(ctx context.Context, cs kubernetes.Interface, name string, want []rbacv1.PolicyRule, labels map[string]string) (bool, error) {
	api := cs.RbacV1().ClusterRoles()
	cur, err := api.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = api.Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}, Rules: want}, metav1.CreateOptions{})
		if err != nil {
			return false, fmt.Errorf("create clusterrole %s: %w", name, err)
		}
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("get clusterrole %s: %w", name, err)
	}
	if reflect.DeepEqual(cur.Rules, want) && hasLabels(cur.Labels, labels) {
		return false, nil
	}
	cur.Rules, cur.Labels = want, withLabels(cur.Labels, labels)
	if _, err := api.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		return false, fmt.Errorf("update clusterrole %s: %w", name, err)
	}
	return true, nil
}

func saSubject(ns string) []rbacv1.Subject {
	return []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: ServiceAccountName, Namespace: ns}}
}

func ensureClusterRoleBinding(ctx context.Context, cs kubernetes.Interface, name, ns string, labels map[string]string) (bool, error) {
	api := cs.RbacV1().ClusterRoleBindings()
	ref := rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: name}
	want := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}, RoleRef: ref, Subjects: saSubject(ns)}
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
	if cur.RoleRef == ref && reflect.DeepEqual(cur.Subjects, want.Subjects) && hasLabels(cur.Labels, labels) {
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
	cur.Subjects, cur.Labels = want.Subjects, withLabels(cur.Labels, labels)
	if _, err := api.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		return false, fmt.Errorf("update clusterrolebinding %s: %w", name, err)
	}
	return true, nil
}

func ensureRole(ctx context.Context, cs kubernetes.Interface, ns string, labels map[string]string) (bool, error) {
	return ensureNamedRole(ctx, cs, ns, MonitoringRoleName, MonitoringRoleRules(), labels)
}

func ensureNamedRole(ctx context.Context, cs kubernetes.Interface, ns, name string, want []rbacv1.PolicyRule, labels map[string]string) (bool, error) {
	api := cs.RbacV1().Roles(ns)
	cur, err := api.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = api.Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}, Rules: want}, metav1.CreateOptions{})
		if err != nil {
			return false, fmt.Errorf("create role %s/%s: %w", ns, name, err)
		}
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("get role %s/%s: %w", ns, name, err)
	}
	if reflect.DeepEqual(cur.Rules, want) && hasLabels(cur.Labels, labels) {
		return false, nil
	}
	cur.Rules, cur.Labels = want, withLabels(cur.Labels, labels)
	if _, err := api.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		return false, fmt.Errorf("update role %s/%s: %w", ns, name, err)
	}
	return true, nil
}

// HARoleRules is what the ServiceAccount may do in its own namespace when
// ha.enabled: elect through Leases (the leader Lease and one candidate
// Lease per agent; a Lease grants nothing) and read and write the one
// shared identity Secret, which the bootstrap creates so no Secret may be
// created. The identity holds what the control plane already has (its
// own token, the ids and gateway it issued, the monitoring credentials
// heartbeats carry), so a token holder learns nothing new from it; every
// other Secret there, the token Secret included, stays out of reach.
func HARoleRules() []rbacv1.PolicyRule {
	return []rbacv1.PolicyRule{
		{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"get", "list", "watch", "create", "update", "patch"}},
		{APIGroups: []string{""}, Resources: []string{"secrets"}, ResourceNames: []string{HASecretName}, Verbs: []string{"get", "update", "patch"}},
	}
}

// ensureHA makes the HA Role, its RoleBinding and the (empty) identity Secret.
func ensureHA(ctx context.Context, cs kubernetes.Interface, n Names) (bool, error) {
	changed := false
	c, err := ensureNamedRole(ctx, cs, n.Namespace, HARoleName, HARoleRules(), n.labels())
	changed = changed || c
	if err != nil {
		return changed, err
	}
	ref := rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: HARoleName}
	c, err = ensureRoleBinding(ctx, cs, n.Namespace, HARoleName, ref, n.Namespace, n.labels())
	changed = changed || c
	if err != nil {
		return changed, err
	}
	_, err = cs.CoreV1().Secrets(n.Namespace).Get(ctx, HASecretName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: HASecretName, Labels: n.labels()}, Type: corev1.SecretTypeOpaque}
		if _, err := cs.CoreV1().Secrets(n.Namespace).Create(ctx, s, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return changed, fmt.Errorf("create secret %s/%s: %w", n.Namespace, HASecretName, err)
		}
		return true, nil
	}
	if err != nil {
		return changed, fmt.Errorf("get secret %s/%s: %w", n.Namespace, HASecretName, err)
	}
	return changed, nil
}

func ensureRoleBinding(ctx context.Context, cs kubernetes.Interface, ns, name string, ref rbacv1.RoleRef, saNS string, labels map[string]string) (bool, error) {
	api := cs.RbacV1().RoleBindings(ns)
	want := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}, RoleRef: ref, Subjects: saSubject(saNS)}
	cur, err := api.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		if _, err := api.Create(ctx, want, metav1.CreateOptions{}); err != nil {
			if apierrors.IsAlreadyExists(err) { // a concurrent bind won the race
				return false, nil
			}
			return false, fmt.Errorf("create rolebinding %s/%s: %w", ns, name, err)
		}
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("get rolebinding %s/%s: %w", ns, name, err)
	}
	if cur.RoleRef == ref && reflect.DeepEqual(cur.Subjects, want.Subjects) && hasLabels(cur.Labels, labels) {
		return false, nil
	}
	if cur.RoleRef != ref {
		if err := api.Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			return false, fmt.Errorf("replace rolebinding %s/%s: %w", ns, name, err)
		}
		if _, err := api.Create(ctx, want, metav1.CreateOptions{}); err != nil {
			return false, fmt.Errorf("create rolebinding %s/%s: %w", ns, name, err)
		}
		return true, nil
	}
	cur.Subjects, cur.Labels = want.Subjects, withLabels(cur.Labels, labels)
	if _, err := api.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		return false, fmt.Errorf("update rolebinding %s/%s: %w", ns, name, err)
	}
	return true, nil
}

// RemoveIdentity deletes what Bootstrap and BindNamespace made for the agent
// named by n, with the admin identity: the RoleBindings in every namespace,
// the monitoring Role, the ClusterRoleBinding, both ClusterRoles, the token
// Secrets and the ServiceAccount. Deleting the ServiceAccount and its token
// Secrets invalidates every token the control plane holds at once (the API
// server answers 401). The namespace itself stays: the monitoring stack may
// live there. It returns what it deleted ("kind namespace/name"); objects
// already gone are not errors, so a second run finishes an interrupted one.
func RemoveIdentity(ctx context.Context, cs kubernetes.Interface, n Names) ([]string, error) {
	n = n.withDefaults()
	var removed []string
	del := func(what string, err error) error {
		switch {
		case err == nil:
			removed = append(removed, what)
		case !apierrors.IsNotFound(err):
			return fmt.Errorf("delete %s: %w", what, err)
		}
		return nil
	}
	sel := metav1.ListOptions{LabelSelector: agentLabel + "=" + n.Namespace}
	// Grants first, so the token can do nothing from here on.
	rbs, err := cs.RbacV1().RoleBindings("").List(ctx, sel)
	if err != nil {
		return removed, fmt.Errorf("list the agent's rolebindings: %w", err)
	}
	items := rbs.Items
	for _, ns := range []string{n.MonitoringNamespace, DefaultMonitoringNS} { // made before the agent label existed
		if rb, err := cs.RbacV1().RoleBindings(ns).Get(ctx, MonitoringRoleName, metav1.GetOptions{}); ns != "" && err == nil &&
			reflect.DeepEqual(rb.Subjects, saSubject(n.Namespace)) && !slices.ContainsFunc(items, func(x rbacv1.RoleBinding) bool { return x.UID == rb.UID }) {
			items = append(items, *rb)
		}
	}
	for _, rb := range items {
		err := cs.RbacV1().RoleBindings(rb.Namespace).Delete(ctx, rb.Name, metav1.DeleteOptions{})
		if err := del("rolebinding "+rb.Namespace+"/"+rb.Name, err); err != nil {
			return removed, err
		}
		if rb.RoleRef.Kind == "Role" && (rb.RoleRef.Name == MonitoringRoleName || rb.RoleRef.Name == HARoleName) {
			err := cs.RbacV1().Roles(rb.Namespace).Delete(ctx, rb.RoleRef.Name, metav1.DeleteOptions{})
			if err := del("role "+rb.Namespace+"/"+rb.RoleRef.Name, err); err != nil {
				return removed, err
			}
		}
	}
	if err := del("clusterrolebinding "+n.ClusterRole, cs.RbacV1().ClusterRoleBindings().Delete(ctx, n.ClusterRole, metav1.DeleteOptions{})); err != nil {
		return removed, err
	}
	secrets, err := cs.CoreV1().Secrets(n.Namespace).List(ctx, metav1.ListOptions{LabelSelector: tokenLabel + "=" + ServiceAccountName})
	if err != nil {
		return removed, fmt.Errorf("list the token secrets: %w", err)
	}
	for _, sec := range secrets.Items {
		err := cs.CoreV1().Secrets(n.Namespace).Delete(ctx, sec.Name, metav1.DeleteOptions{})
		if err := del("secret "+n.Namespace+"/"+sec.Name, err); err != nil {
			return removed, err
		}
	}
	// An HA install's shared identity holds a copy of the token; its
	// Leases hold nothing secret but go with it.
	if err := del("secret "+n.Namespace+"/"+HASecretName, cs.CoreV1().Secrets(n.Namespace).Delete(ctx, HASecretName, metav1.DeleteOptions{})); err != nil {
		return removed, err
	}
	leases, err := cs.CoordinationV1().Leases(n.Namespace).List(ctx, metav1.ListOptions{LabelSelector: HALeaseLabel})
	if err != nil {
		return removed, fmt.Errorf("list the agent's leases: %w", err)
	}
	names := []string{HALeaseName}
	for _, l := range leases.Items {
		names = append(names, l.Name)
	}
	for _, name := range names {
		if err := del("lease "+n.Namespace+"/"+name, cs.CoordinationV1().Leases(n.Namespace).Delete(ctx, name, metav1.DeleteOptions{})); err != nil {
			return removed, err
		}
	}
	if err := del("serviceaccount "+n.Namespace+"/"+ServiceAccountName,
		cs.CoreV1().ServiceAccounts(n.Namespace).Delete(ctx, ServiceAccountName, metav1.DeleteOptions{})); err != nil {
		return removed, err
	}
	for _, cr := range []string{n.ClusterRole, n.WorkloadRole()} {
		if err := del("clusterrole "+cr, cs.RbacV1().ClusterRoles().Delete(ctx, cr, metav1.DeleteOptions{})); err != nil {
			return removed, err
		}
	}
	return removed, nil
}

// NamesFor places the objects of an agent configured with namespace (as the
// Manager does) and, when monitoring is on, its monitoring namespace.
func NamesFor(namespace, monitoringNS string) Names {
	n := defaultNames(namespace)
	n.MonitoringNamespace = monitoringNS
	return n
}
