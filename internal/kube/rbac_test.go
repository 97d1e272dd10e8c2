package kube_test

import (
	"context"
	"testing"

	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
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

func TestServiceAccountMayDoExactlyWhatTheClusterRoleGrants(t *testing.T) {
	t.Parallel()
	env := kubetest.Cluster(t)
	n := testNames(t, env, true)
	if _, err := kube.Bootstrap(context.Background(), env.Client, n); err != nil {
		t.Fatal(err)
	}
	sa := asServiceAccount(t, env, n.Namespace)

	// Every (group, resource, verb) of the ClusterRole is allowed, in any namespace.
	for _, rule := range kube.ClusterRoleRules() {
		for _, g := range rule.APIGroups {
			for _, res := range rule.Resources {
				for _, v := range rule.Verbs {
					r, sub := splitSub(res)
					a := authzv1.ResourceAttributes{Namespace: "some-app", Group: g, Resource: r, Subresource: sub, Verb: v}
					if !canI(t, sa, a) {
						t.Errorf("forbidden but granted by the ClusterRole: %s %s/%s (group %q)", v, r, sub, g)
					}
				}
			}
		}
	}
	// Everything else is forbidden: a table of what an attacker holding the
	// token would want, and of verbs the role leaves out.
	forbidden := []authzv1.ResourceAttributes{
		{Group: "rbac.authorization.k8s.io", Resource: "clusterroles", Verb: "create"},
		{Group: "rbac.authorization.k8s.io", Resource: "clusterrolebindings", Verb: "create"},
		{Group: "rbac.authorization.k8s.io", Resource: "roles", Verb: "create", Namespace: "some-app"},
		{Group: "rbac.authorization.k8s.io", Resource: "rolebindings", Verb: "create", Namespace: "some-app"},
		{Group: "rbac.authorization.k8s.io", Resource: "clusterroles", Verb: "escalate"},
		{Group: "apiextensions.k8s.io", Resource: "customresourcedefinitions", Verb: "create"},
		{Group: "admissionregistration.k8s.io", Resource: "mutatingwebhookconfigurations", Verb: "create"},
		{Group: "admissionregistration.k8s.io", Resource: "validatingwebhookconfigurations", Verb: "delete"},
		{Group: "certificates.k8s.io", Resource: "certificatesigningrequests", Verb: "create"},
		{Resource: "nodes", Verb: "delete"},
		{Resource: "nodes", Verb: "update"},
		{Resource: "nodes", Subresource: "proxy", Verb: "get"},
		{Resource: "persistentvolumes", Verb: "create"},
		{Resource: "serviceaccounts", Subresource: "token", Verb: "create", Namespace: "some-app"},
		{Resource: "pods", Subresource: "ephemeralcontainers", Verb: "update", Namespace: "some-app"},
		{Resource: "pods", Subresource: "log", Verb: "delete", Namespace: "some-app"},
		{Resource: "users", Verb: "impersonate"},
		{Group: "storage.k8s.io", Resource: "storageclasses", Verb: "create"},
		{Group: "networking.k8s.io", Resource: "ingressclasses", Verb: "create"},
		{Group: "discovery.k8s.io", Resource: "endpointslices", Verb: "create", Namespace: "some-app"},
		{Group: "metrics.k8s.io", Resource: "nodes", Verb: "watch"},
		{Resource: "namespaces", Verb: "deletecollection"},
	}
	for _, a := range forbidden {
		if canI(t, sa, a) {
			t.Errorf("allowed but not granted: %s %s/%s (group %q)", a.Verb, a.Resource, a.Subresource, a.Group)
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
