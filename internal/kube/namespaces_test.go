package kube_test

import (
	"context"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/pipeops/pipeops-vm-agent/internal/config"
	"github.com/pipeops/pipeops-vm-agent/internal/kube"
	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
)

func TestTheManagerGrantsTheWorkloadRoleInEveryNamespaceButTheProtectedOnes(t *testing.T) {
	t.Parallel()
	env := kubetest.Cluster(t)
	n := testNames(t, env, false)
	ctx := context.Background()
	extra := env.Namespace + "-extra"
	m := startManager(t, env, config.Kubernetes{Namespace: n.Namespace}, kube.WithNames(n), kube.WithProtectedNamespaces(extra))
	credentials(t, m)

	rb := func(ns string) bool {
		_, err := env.Client.RbacV1().RoleBindings(ns).Get(ctx, n.WorkloadRole(), metav1.GetOptions{})
		return err == nil
	}
	app := env.Namespace + "-later"
	for _, ns := range []string{app, extra} {
		if _, err := env.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { env.Client.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{}) })
	}
	eventually(t, 10*time.Second, "the workload RoleBinding in a namespace created after start", func() bool { return rb(app) })
	for _, ns := range []string{"kube-system", "kube-public", "kube-node-lease", n.Namespace, extra} {
		if rb(ns) {
			t.Errorf("the workload role is bound in protected namespace %s", ns)
		}
	}
}

func TestANamespaceCreatedThroughTheProxyIdentityIsWritableAtOnce(t *testing.T) {
	t.Parallel()
	env := kubetest.Cluster(t)
	n := testNames(t, env, false)
	ctx := context.Background()
	m := startManager(t, env, config.Kubernetes{Namespace: n.Namespace}, kube.WithNames(n))
	credentials(t, m)
	var cs kubernetes.Interface
	eventually(t, 10*time.Second, "the proxy identity with the namespace hook", func() bool {
		pc := m.ProxyConfig()
		if pc == nil || pc.WrapTransport == nil {
			return false
		}
		cs = kubernetes.NewForConfigOrDie(pc)
		return true
	})
	// What the control plane does: create a namespace, deploy into it right away.
	for i := range 5 {
		ns := env.Namespace + "-p" + string(rune('a'+i))
		if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { env.Client.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{}) })
		if _, err := cs.AppsV1().Deployments(ns).Create(ctx, deployment("app"), metav1.CreateOptions{}); err != nil {
			t.Fatalf("deploy into a namespace just created through the proxy identity: %v", err)
		}
	}
}

func deployment(name string) *appsv1.Deployment {
	labels := map[string]string{"app": name}
	return &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: appsv1.DeploymentSpec{
		Selector: &metav1.LabelSelector{MatchLabels: labels},
		Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "registry.example/app:1"}}}},
	}}
}
