package kube_test

import (
	"context"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pipeops/pipeops-vm-agent/internal/kube"
	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
)

// resourceVersions reads every object Bootstrap manages.
func resourceVersions(t *testing.T, env *kubetest.Env, n kube.Names) map[string]string {
	t.Helper()
	ctx := context.Background()
	out := map[string]string{}
	get := func(name string, obj metav1.Object, err error) {
		if err != nil {
			t.Fatalf("get %s: %v", name, err)
		}
		out[name] = obj.GetResourceVersion()
	}
	c := env.Client
	ns, err := c.CoreV1().Namespaces().Get(ctx, n.Namespace, metav1.GetOptions{})
	get("namespace", ns, err)
	sa, err := c.CoreV1().ServiceAccounts(n.Namespace).Get(ctx, kube.ServiceAccountName, metav1.GetOptions{})
	get("serviceaccount", sa, err)
	cr, err := c.RbacV1().ClusterRoles().Get(ctx, n.ClusterRole, metav1.GetOptions{})
	get("clusterrole", cr, err)
	wr, err := c.RbacV1().ClusterRoles().Get(ctx, n.WorkloadRole(), metav1.GetOptions{})
	get("workload clusterrole", wr, err)
	crb, err := c.RbacV1().ClusterRoleBindings().Get(ctx, n.ClusterRole, metav1.GetOptions{})
	get("clusterrolebinding", crb, err)
	mns, err := c.CoreV1().Namespaces().Get(ctx, n.MonitoringNamespace, metav1.GetOptions{})
	get("monitoring namespace", mns, err)
	r, err := c.RbacV1().Roles(n.MonitoringNamespace).Get(ctx, kube.MonitoringRoleName, metav1.GetOptions{})
	get("monitoring role", r, err)
	rb, err := c.RbacV1().RoleBindings(n.MonitoringNamespace).Get(ctx, kube.MonitoringRoleName, metav1.GetOptions{})
	get("monitoring rolebinding", rb, err)
	return out
}

func TestBootstrapIsIdempotentAndRepairsDrift(t *testing.T) {
	t.Parallel()
	env := kubetest.Cluster(t)
	n := testNames(t, env, true)
	ctx := context.Background()

	changed, err := kube.Bootstrap(ctx, env.Client, n)
	if err != nil {
		t.Fatal(err)
	}
	// The namespace exists already (kubetest made it); the other seven are new.
	if changed != 7 {
		t.Fatalf("first run changed %d objects, want 7", changed)
	}
	before := resourceVersions(t, env, n)
	changed, err = kube.Bootstrap(ctx, env.Client, n)
	if err != nil {
		t.Fatal(err)
	}
	if changed != 0 {
		t.Fatalf("second run changed %d objects, want 0", changed)
	}
	after := resourceVersions(t, env, n)
	for k, v := range before {
		if after[k] != v {
			t.Errorf("%s resourceVersion moved from %s to %s on a no-op run", k, v, after[k])
		}
	}

	// Someone strips a rule: the next run puts it back, touching only that object.
	cr, _ := env.Client.RbacV1().ClusterRoles().Get(ctx, n.ClusterRole, metav1.GetOptions{})
	cr.Rules = cr.Rules[1:]
	if _, err := env.Client.RbacV1().ClusterRoles().Update(ctx, cr, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if changed, err = kube.Bootstrap(ctx, env.Client, n); err != nil || changed != 1 {
		t.Fatalf("repair run = %d, %v; want 1 change", changed, err)
	}
	cr, _ = env.Client.RbacV1().ClusterRoles().Get(ctx, n.ClusterRole, metav1.GetOptions{})
	if len(cr.Rules) != len(kube.ClusterRoleRules()) {
		t.Fatalf("clusterrole has %d rules after repair, want %d", len(cr.Rules), len(kube.ClusterRoleRules()))
	}
}
