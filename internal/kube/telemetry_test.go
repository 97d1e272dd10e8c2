package kube_test

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pipeops/pipeops-vm-agent/internal/config"
	"github.com/pipeops/pipeops-vm-agent/internal/kube"
	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
)

func requests(cpu, mem string) corev1.ResourceRequirements {
	return corev1.ResourceRequirements{Requests: corev1.ResourceList{
		corev1.ResourceCPU: resource.MustParse(cpu), corev1.ResourceMemory: resource.MustParse(mem)}}
}

func TestTelemetryCountsTheClustersNodesAndPodsAndSumsRequests(t *testing.T) {
	t.Parallel()
	// A private cluster, so that the counts are exactly what this test makes.
	// It has no metrics.k8s.io, so usage comes from requests.
	p := kubetest.PrivateCluster(t, false)
	ctx := context.Background()
	c := p.Client
	for _, name := range []string{"node-a", "node-b"} {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Status: corev1.NodeStatus{
			Allocatable: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("4"), corev1.ResourceMemory: resource.MustParse("8Gi")}}}
		created, err := c.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		created.Status = n.Status
		if _, err := c.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// Without kube-controller-manager nobody makes the default ServiceAccount.
	if _, err := c.CoreV1().ServiceAccounts(p.Namespace).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	no := false
	ctr := func(name, cpu, mem string) corev1.Container {
		return corev1.Container{Name: name, Image: "example.invalid/x", Resources: requests(cpu, mem)}
	}
	mk := func(name, node string, init []corev1.Container, cs ...corev1.Container) {
		po := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.PodSpec{NodeName: node,
			AutomountServiceAccountToken: &no, InitContainers: init, Containers: cs}}
		if _, err := c.CoreV1().Pods(p.Namespace).Create(ctx, po, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	mk("one", "node-a", nil, ctr("a", "500m", "1Gi"))
	mk("two", "node-b", nil, ctr("a", "250m", "512Mi"), ctr("b", "250m", "512Mi"))
	// An init container bigger than the app: the scheduler reserves the init's CPU.
	mk("three", "node-a", []corev1.Container{ctr("init", "2", "256Mi")}, ctr("a", "100m", "2Gi"))
	// Not scheduled: counted as a pod, reserves nothing.
	mk("pending", "", nil, ctr("a", "1", "1Gi"))

	clock := newFakeClock()
	m := startManager(t, p.Env, config.Kubernetes{Namespace: "pipeops-system"}, kube.WithClock(clock.Now),
		kube.WithIntervals(100*time.Millisecond, 100*time.Millisecond, 300*time.Millisecond))
	want := kube.Telemetry{Nodes: 2, Pods: 4, CPUUsage: "37.5%", MemoryUsage: "25.0%",
		CPUSource: "requests on 2 nodes", MemorySource: "requests on 2 nodes"}
	var got kube.Telemetry
	eventually(t, 60*time.Second, "telemetry to match", func() bool {
		clock.Add(time.Minute) // past the 15 s cache
		var err error
		got, err = m.Telemetry(ctx)
		got.K8sVersion = ""
		return err == nil && got == want
	})
	tel, _ := m.Telemetry(ctx)
	if v, _ := m.Version(ctx); tel.K8sVersion != v || v == "" {
		t.Fatalf("telemetry version %q, API server %q", tel.K8sVersion, v)
	}

	// A deleted pod leaves the count through the watch, without a new list.
	if err := c.CoreV1().Pods(p.Namespace).Delete(ctx, "three", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	want = kube.Telemetry{Nodes: 2, Pods: 3, CPUUsage: "12.5%", MemoryUsage: "12.5%",
		CPUSource: "requests on 2 nodes", MemorySource: "requests on 2 nodes"}
	eventually(t, 30*time.Second, "telemetry after a delete", func() bool {
		clock.Add(time.Minute)
		got, _ = m.Telemetry(ctx)
		got.K8sVersion = ""
		return got == want
	})
	if st := m.Status(ctx); st.Nodes != 2 || st.Pods != 3 || st.CPUSource != "requests on 2 nodes" {
		t.Fatalf("Status = %+v", st)
	}
}
