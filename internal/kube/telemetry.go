package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// Usage sources reported with CPU and memory figures.
const (
	UsageFromMetricsAPI = "metrics-api" // metrics.k8s.io node usage over allocatable
	UsageFromRequests   = "requests"    // sum of scheduled pods' requests over allocatable
)

// Telemetry is the cluster part of the heartbeat (protocol.md §4.2). Its
// fields match controlplane.Telemetry, so the daemon converts with a plain
// type conversion.
type Telemetry struct {
	K8sVersion  string
	Nodes       int
	Pods        int
	CPUUsage    string // "37.5%"; "" when unknown (no allocatable), never a made-up 0%
	MemoryUsage string
	UsageSource string // UsageFromMetricsAPI or UsageFromRequests; "" when unknown
}

// telemetry keeps node and pod counts from informers (one LIST, then a
// WATCH: no periodic full pod list, however big the cluster) whose objects
// are trimmed to the few fields the figures need.
type telemetry struct {
	cs      kubernetes.Interface
	now     func() time.Time
	ttl     time.Duration
	factory informers.SharedInformerFactory
	nodes   cache.SharedIndexInformer
	pods    cache.SharedIndexInformer

	mu           sync.Mutex
	cached       Telemetry
	cachedAt     time.Time
	metricsAt    time.Time // last check whether metrics.k8s.io is served
	metricsServe bool
}

func newTelemetry(cs kubernetes.Interface, now func() time.Time, ttl time.Duration) *telemetry {
	f := informers.NewSharedInformerFactoryWithOptions(cs, 0, informers.WithTransform(trim))
	return &telemetry{cs: cs, now: now, ttl: ttl, factory: f,
		nodes: f.Core().V1().Nodes().Informer(), pods: f.Core().V1().Pods().Informer()}
}

func (t *telemetry) start(ctx context.Context) { t.factory.Start(ctx.Done()) }

func (t *telemetry) synced() bool { return t.nodes.HasSynced() && t.pods.HasSynced() }

// trim keeps only what telemetry reads, so a pod costs a few hundred bytes
// of agent memory instead of several KiB.
func trim(obj any) (any, error) {
	switch o := obj.(type) {
	case *corev1.Pod:
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: o.Name, Namespace: o.Namespace, UID: o.UID, ResourceVersion: o.ResourceVersion},
			Spec: corev1.PodSpec{NodeName: o.Spec.NodeName, Overhead: o.Spec.Overhead}, Status: corev1.PodStatus{Phase: o.Status.Phase}}
		for _, c := range o.Spec.Containers {
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Resources: corev1.ResourceRequirements{Requests: c.Resources.Requests}})
		}
		for _, c := range o.Spec.InitContainers {
			p.Spec.InitContainers = append(p.Spec.InitContainers, corev1.Container{Resources: corev1.ResourceRequirements{Requests: c.Resources.Requests}, RestartPolicy: c.RestartPolicy})
		}
		return p, nil
	case *corev1.Node:
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: o.Name, UID: o.UID, ResourceVersion: o.ResourceVersion},
			Status: corev1.NodeStatus{Allocatable: o.Status.Allocatable}}, nil
	}
	return obj, nil
}

var errNotSynced = errors.New("node and pod caches are not synced yet")

// get returns the figures, recomputed at most once per ttl.
func (t *telemetry) get(ctx context.Context) (Telemetry, error) {
	if !t.synced() {
		return Telemetry{}, errNotSynced
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	if !t.cachedAt.IsZero() && now.Sub(t.cachedAt) < t.ttl {
		return t.cached, nil
	}
	var tel Telemetry
	var allocCPU, allocMem int64 // millicores, bytes
	nodes := t.nodes.GetStore().List()
	tel.Nodes = len(nodes)
	for _, o := range nodes {
		n := o.(*corev1.Node)
		allocCPU += n.Status.Allocatable.Cpu().MilliValue()
		allocMem += n.Status.Allocatable.Memory().Value()
	}
	pods := t.pods.GetStore().List()
	tel.Pods = len(pods)

	usedCPU, usedMem, source := int64(0), int64(0), ""
	if t.metricsServed(now) {
		if c, m, err := t.metricsUsage(ctx); err == nil {
			usedCPU, usedMem, source = c, m, UsageFromMetricsAPI
		}
	}
	if source == "" {
		for _, o := range pods {
			p := o.(*corev1.Pod)
			if p.Spec.NodeName == "" || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
				continue
			}
			c, m := podRequests(p)
			usedCPU += c
			usedMem += m
		}
		source = UsageFromRequests
	}
	if allocCPU > 0 && allocMem > 0 {
		tel.CPUUsage = percent(usedCPU, allocCPU)
		tel.MemoryUsage = percent(usedMem, allocMem)
		tel.UsageSource = source
	}
	t.cached, t.cachedAt = tel, now
	return tel, nil
}

func percent(used, total int64) string {
	return fmt.Sprintf("%.1f%%", float64(used)*100/float64(total))
}

// podRequests is what the scheduler reserves for a pod: the larger of the
// containers' sum (plus sidecar init containers) and the biggest init
// container, plus the pod overhead. CPU in millicores, memory in bytes.
func podRequests(p *corev1.Pod) (cpu, mem int64) {
	var sideCPU, sideMem, initCPU, initMem int64
	for _, c := range p.Spec.InitContainers {
		cc, cm := c.Resources.Requests.Cpu().MilliValue(), c.Resources.Requests.Memory().Value()
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			sideCPU += cc
			sideMem += cm
			continue
		}
		initCPU, initMem = max(initCPU, sideCPU+cc), max(initMem, sideMem+cm)
	}
	for _, c := range p.Spec.Containers {
		cpu += c.Resources.Requests.Cpu().MilliValue()
		mem += c.Resources.Requests.Memory().Value()
	}
	cpu, mem = max(cpu+sideCPU, initCPU), max(mem+sideMem, initMem)
	cpu += p.Spec.Overhead.Cpu().MilliValue()
	mem += p.Spec.Overhead.Memory().Value()
	return cpu, mem
}

// metricsServed checks (every 5 minutes) whether metrics.k8s.io is served.
func (t *telemetry) metricsServed(now time.Time) bool {
	if !t.metricsAt.IsZero() && now.Sub(t.metricsAt) < 5*time.Minute {
		return t.metricsServe
	}
	t.metricsAt = now
	_, err := t.cs.Discovery().ServerResourcesForGroupVersion("metrics.k8s.io/v1beta1")
	t.metricsServe = err == nil
	return t.metricsServe
}

// metricsUsage sums node usage from the metrics API (one small list of nodes).
func (t *telemetry) metricsUsage(ctx context.Context) (cpu, mem int64, err error) {
	raw, err := t.cs.CoreV1().RESTClient().Get().AbsPath("/apis/metrics.k8s.io/v1beta1/nodes").Do(ctx).Raw()
	if err != nil {
		return 0, 0, fmt.Errorf("metrics.k8s.io nodes: %w", err)
	}
	var list struct {
		Items []struct {
			Usage map[corev1.ResourceName]resource.Quantity `json:"usage"`
		} `json:"items"`
	}
	if err := json.Unmarshal(raw, &list); err != nil {
		return 0, 0, fmt.Errorf("decode metrics.k8s.io nodes: %w", err)
	}
	for _, it := range list.Items {
		c, m := it.Usage[corev1.ResourceCPU], it.Usage[corev1.ResourceMemory]
		cpu += c.MilliValue()
		mem += m.Value()
	}
	return cpu, mem, nil
}
