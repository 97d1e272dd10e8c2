package kube_test

import (
	"context"
	"testing"

	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/pipeops/pipeops-vm-agent/internal/kube"
	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
)

// asServiceAccount returns a clientset authenticated only by a fresh token
// of the agent's ServiceAccount.
func asServiceAccount(t *testing.T, env *kubetest.Env, ns string) kubernetes.Interface {
	t.Helper()
	tr, err := env.Client.CoreV1().ServiceAccounts(ns).CreateToken(context.Background(), kube.ServiceAccountName,
		&authnv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := &rest.Config{Host: env.Config.Host, TLSClientConfig: rest.TLSClientConfig{CAData: env.Config.CAData, CAFile: env.Config.CAFile},
		BearerToken: tr.Status.Token, QPS: 200, Burst: 400}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

func canI(t *testing.T, cs kubernetes.Interface, a authzv1.ResourceAttributes) bool {
	t.Helper()
	r, err := cs.AuthorizationV1().SelfSubjectAccessReviews().Create(context.Background(),
		&authzv1.SelfSubjectAccessReview{Spec: authzv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &a}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("selfsubjectaccessreview %+v: %v", a, err)
	}
	return r.Status.Allowed
}

func splitSub(res string) (string, string) {
	for i := range res {
		if res[i] == '/' {
			return res[:i], res[i+1:]
		}
	}
	return res, ""
}

func TestServiceAccountMayDoExactlyWhatItsRolesGrant(t *testing.T) {
	t.Parallel()
	env := kubetest.Cluster(t)
	n := testNames(t, env, true)
	ctx := context.Background()
	if _, err := kube.Bootstrap(ctx, env.Client, n); err != nil {
		t.Fatal(err)
	}
	app := env.Namespace + "-app"
	if _, err := env.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: app}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.Client.CoreV1().Namespaces().Delete(context.Background(), app, metav1.DeleteOptions{}) })
	protected := kube.ProtectedNamespaces(n)
	if _, err := kube.BindNamespace(ctx, env.Client, n, app, protected); err != nil {
		t.Fatal(err)
	}
	if _, err := kube.BindNamespace(ctx, env.Client, n, "kube-system", protected); err == nil {
		t.Fatal("BindNamespace granted the workload role in kube-system")
	}
	sa := asServiceAccount(t, env, n.Namespace)
	each := func(rules []rbacv1.PolicyRule, fn func(a authzv1.ResourceAttributes)) {
		for _, rule := range rules {
			for _, g := range rule.APIGroups {
				for _, res := range rule.Resources {
					for _, v := range rule.Verbs {
						r, sub := splitSub(res)
						fn(authzv1.ResourceAttributes{Group: g, Resource: r, Subresource: sub, Verb: v})
					}
				}
			}
		}
	}
	// The ClusterRole holds in every namespace, kube-system included: it only reads.
	each(kube.ClusterRoleRules(), func(a authzv1.ResourceAttributes) {
		for _, ns := range []string{app, "kube-system"} {
			a.Namespace = ns
			if !canI(t, sa, a) {
				t.Errorf("forbidden but granted by the ClusterRole: %s %s/%s (group %q) in %s", a.Verb, a.Resource, a.Subresource, a.Group, ns)
			}
		}
	})
	// The workload role holds where it is bound, and nowhere else.
	each(kube.WorkloadRoleRules(), func(a authzv1.ResourceAttributes) {
		a.Namespace = app
		if !canI(t, sa, a) {
			t.Errorf("forbidden but granted by the workload role: %s %s/%s (group %q) in %s", a.Verb, a.Resource, a.Subresource, a.Group, app)
		}
		if a.Verb == "get" || a.Verb == "list" || a.Verb == "watch" {
			return // reads are cluster-wide where the ClusterRole has them
		}
		for _, ns := range []string{"kube-system", n.Namespace, env.Namespace + "-unbound"} {
			a.Namespace = ns
			if canI(t, sa, a) {
				t.Errorf("allowed outside a bound namespace: %s %s/%s (group %q) in %s", a.Verb, a.Resource, a.Subresource, a.Group, ns)
			}
		}
	})
	// Everything else is forbidden: a table of what an attacker holding the
	// token would want, and of verbs the roles leave out.
	forbidden := []authzv1.ResourceAttributes{
		{Group: "rbac.authorization.k8s.io", Resource: "clusterroles", Verb: "create"},
		{Group: "rbac.authorization.k8s.io", Resource: "clusterrolebindings", Verb: "create"},
		{Group: "rbac.authorization.k8s.io", Resource: "roles", Verb: "create", Namespace: app},
		{Group: "rbac.authorization.k8s.io", Resource: "rolebindings", Verb: "create", Namespace: app},
		{Group: "rbac.authorization.k8s.io", Resource: "clusterroles", Verb: "escalate"},
		{Group: "rbac.authorization.k8s.io", Resource: "clusterroles", Verb: "bind"},
		{Group: "rbac.authorization.k8s.io", Resource: "roles", Verb: "bind", Namespace: app},
		{Group: "apiextensions.k8s.io", Resource: "customresourcedefinitions", Verb: "create"},
		{Group: "admissionregistration.k8s.io", Resource: "mutatingwebhookconfigurations", Verb: "create"},
		{Group: "admissionregistration.k8s.io", Resource: "validatingwebhookconfigurations", Verb: "delete"},
		{Group: "certificates.k8s.io", Resource: "certificatesigningrequests", Verb: "create"},
		{Resource: "nodes", Verb: "delete"},
		{Resource: "nodes", Verb: "update"},
		{Resource: "nodes", Subresource: "proxy", Verb: "get"},
		{Resource: "persistentvolumes", Verb: "create"},
		{Resource: "serviceaccounts", Subresource: "token", Verb: "create", Namespace: app},
		{Resource: "serviceaccounts", Subresource: "token", Verb: "create", Namespace: "kube-system"},
		{Resource: "serviceaccounts", Subresource: "token", Verb: "create", Namespace: n.Namespace},
		{Resource: "pods", Subresource: "ephemeralcontainers", Verb: "update", Namespace: app},
		{Resource: "pods", Subresource: "log", Verb: "delete", Namespace: app},
		{Resource: "pods", Verb: "create", Namespace: "kube-system"},
		{Resource: "pods", Subresource: "exec", Verb: "create", Namespace: "kube-system"},
		{Resource: "secrets", Verb: "get", Namespace: "kube-system"},
		{Resource: "secrets", Verb: "list", Namespace: "kube-system"},
		{Resource: "secrets", Verb: "list", Namespace: n.Namespace},
		{Resource: "configmaps", Verb: "update", Namespace: "kube-system"},
		{Resource: "endpoints", Verb: "create", Namespace: app},
		{Resource: "namespaces", Verb: "update", Name: "kube-system"},
		{Resource: "users", Verb: "impersonate"},
		{Resource: "serviceaccounts", Verb: "impersonate", Namespace: "kube-system"},
		{Group: "storage.k8s.io", Resource: "storageclasses", Verb: "create"},
		{Group: "networking.k8s.io", Resource: "ingressclasses", Verb: "create"},
		{Group: "discovery.k8s.io", Resource: "endpointslices", Verb: "create", Namespace: app},
		{Group: "metrics.k8s.io", Resource: "nodes", Verb: "watch"},
		{Resource: "namespaces", Verb: "deletecollection"},
	}
	for _, a := range forbidden {
		if canI(t, sa, a) {
			t.Errorf("allowed but not granted: %s %s/%s (group %q) in %q", a.Verb, a.Resource, a.Subresource, a.Group, a.Namespace)
		}
	}
}

func TestTheMonitoringRoleIsSeparateAndNamespaced(t *testing.T) {
	t.Parallel()
	env := kubetest.Cluster(t)
	n := testNames(t, env, true)
	ctx := context.Background()
	if _, err := kube.Bootstrap(ctx, env.Client, n); err != nil {
		t.Fatal(err)
	}
	// Without the ClusterRole binding, only the monitoring Role is left: it
	// must allow services/proxy in the monitoring namespace and nowhere else.
	if err := env.Client.RbacV1().ClusterRoleBindings().Delete(ctx, n.ClusterRole, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	sa := asServiceAccount(t, env, n.Namespace)
	for _, v := range []string{"get", "create"} {
		if !canI(t, sa, authzv1.ResourceAttributes{Namespace: n.MonitoringNamespace, Resource: "services", Subresource: "proxy", Verb: v}) {
			t.Errorf("%s services/proxy in %s is forbidden", v, n.MonitoringNamespace)
		}
		if canI(t, sa, authzv1.ResourceAttributes{Namespace: "some-app", Resource: "services", Subresource: "proxy", Verb: v}) {
			t.Errorf("%s services/proxy outside the monitoring namespace is allowed by the Role alone", v)
		}
	}
}
