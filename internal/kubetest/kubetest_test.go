package kubetest_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

func TestMain(m *testing.M) { kubetest.Main(m) }

func TestEachTestGetsItsOwnNamespaceOnARealAPIServer(t *testing.T) {
	a := kubetest.Cluster(t)
	b := kubetest.Cluster(t)
	if a.Namespace == b.Namespace {
		t.Fatalf("two calls share namespace %q", a.Namespace)
	}
	ctx := context.Background()
	v, err := a.Client.Discovery().ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	if v.GitVersion == "" || v.GitVersion == "v0.0.0-master+$Format:%H$" {
		t.Fatalf("server version %q is not stamped", v.GitVersion)
	}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "x"}, Data: map[string]string{"k": "v"}}
	if _, err := a.Client.CoreV1().ConfigMaps(a.Namespace).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Client.CoreV1().ConfigMaps(b.Namespace).Get(ctx, "x", metav1.GetOptions{}); err == nil {
		t.Fatal("a ConfigMap from one test's namespace is visible in another's")
	}
	if out := a.Kubectl(t, "-n", a.Namespace, "get", "configmap", "x", "-o", "name"); out != "configmap/x\n" {
		t.Fatalf("kubectl get = %q", out)
	}
}

func TestFullClusterRunsADeploymentToReady(t *testing.T) {
	env := kubetest.RequireFull(t)
	ctx := context.Background()
	labels := map[string]string{"app": "web"}
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](2),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "example.invalid/web:1"}}},
			},
		},
	}
	if _, err := env.Client.AppsV1().Deployments(env.Namespace).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var d *appsv1.Deployment
	testbin.Eventually(t, 60*time.Second, "the deployment's two replicas ready", func() bool {
		var err error
		if d, err = env.Client.AppsV1().Deployments(env.Namespace).Get(ctx, "web", metav1.GetOptions{}); err != nil {
			t.Fatal(err)
		}
		return d.Status.ReadyReplicas == 2
	}, func() string { return fmt.Sprintf("status %+v", d.Status) })
}

func TestAPrivateClusterSurvivesAnAPIServerRestart(t *testing.T) {
	p := kubetest.PrivateCluster(t, false)
	ctx := context.Background()
	if _, err := p.Client.CoreV1().Namespaces().Get(ctx, p.Namespace, metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	}
	p.StopAPIServer(t)
	short, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if _, err := p.Client.CoreV1().Namespaces().Get(short, p.Namespace, metav1.GetOptions{}); err == nil {
		t.Fatal("the API answered while kube-apiserver was stopped")
	}
	p.StartAPIServer(t)
	if _, err := p.Client.CoreV1().Namespaces().Get(ctx, p.Namespace, metav1.GetOptions{}); err != nil {
		t.Fatalf("after restart: %v (etcd data should survive)", err)
	}
}
