package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// Where a node's CPU or memory figure comes from, best first.
const (
	UsageFromProc       = "proc"        // this machine's /proc/stat and /proc/meminfo, for the node the agent runs on
	UsageFromMetricsAPI = "metrics-api" // metrics.k8s.io node usage over allocatable
	UsageFromRequests   = "requests"    // sum of scheduled pods' requests over allocatable
)

// Telemetry is the cluster part of the heartbeat (protocol.md §4.2) plus,
// for local status only, where each figure came from.
type Telemetry struct {
	K8sVersion  string
	Nodes       int
	Pods        int
	CPUUsage    string // "37.5%"; "" when unknown (no allocatable), never a made-up 0%
	MemoryUsage string
	// CPUSource and MemorySource say where each figure came from, per
	// source with its nodes: "proc on vm-1 + metrics-api on 2 nodes". Local
	// status shows them; the heartbeat does not carry them.
	CPUSource, MemorySource string
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

	hostname string
	local    func() map[string]bool // this machine's addresses

	mu           sync.Mutex
	host         *hostUsage
	cached       Telemetry
	cachedAt     time.Time
	metricsAt    time.Time // last check whether metrics.k8s.io is served
	metricsServe bool
}

// newTelemetry recomputes the figures at most once per ttl; this machine's
// CPU is a rate over at least every (the heartbeat interval).
func newTelemetry(cs kubernetes.Interface, now func() time.Time, ttl, every time.Duration) *telemetry {
	f := informers.NewSharedInformerFactoryWithOptions(cs, 0, informers.WithTransform(trim))
	host, _ := os.Hostname()
	return &telemetry{cs: cs, now: now, ttl: ttl, factory: f, hostname: host, local: localAddrs, host: newHostUsage(every),
		nodes: f.Core().V1().Nodes().Informer(), pods: f.Core().V1().Pods().Informer()}
}

func (t *telemetry) start(ctx context.Context) {
	t.mu.Lock()
	t.host.cpu(t.now()) // the first sample, so the first interval starts now
	t.mu.Unlock()
	t.factory.Start(ctx.Done())
}

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
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: o.Name, UID: o.UID, ResourceVersion: o.ResourceVersion},
			Status: corev1.NodeStatus{Allocatable: o.Status.Allocatable}}
		for _, a := range o.Status.Addresses { // to find the node this machine is
			if a.Type == corev1.NodeInternalIP || a.Type == corev1.NodeExternalIP {
				n.Status.Addresses = append(n.Status.Addresses, a)
			}
		}
		return n, nil
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
	var nodes []*corev1.Node
	for _, o := range t.nodes.GetStore().List() {
		nodes = append(nodes, o.(*corev1.Node))
	}
	tel.Nodes = len(nodes)
	pods := t.pods.GetStore().List()
	tel.Pods = len(pods)

	// Per node, the best source each figure has: /proc for the node this
	// machine is, the metrics API for the others when it is served, else
	// the requests of the node's pods.
	self := selfNode(nodes, t.hostname, t.local())
	var metrics map[string]nodeUsage
	if len(nodes) > 0 && t.metricsServed(now) {
		metrics, _ = t.metricsUsage(ctx)
	}
	var requested map[string]nodeUsage
	requests := func(node string) nodeUsage {
		if requested == nil {
			requested = requestsByNode(pods)
		}
		return requested[node]
	}
	var cpu, mem figure
	for _, n := range nodes {
		allocCPU, allocMem := n.Status.Allocatable.Cpu().MilliValue(), n.Status.Allocatable.Memory().Value()
		if u, c, ok := t.hostIf(n.Name == self, now, (*hostUsage).cpuAt); ok {
			cpu.add(UsageFromProc, n.Name, u, c)
		} else if m, ok := metrics[n.Name]; ok {
			cpu.add(UsageFromMetricsAPI, n.Name, m.cpu, allocCPU)
		} else {
			cpu.add(UsageFromRequests, n.Name, requests(n.Name).cpu, allocCPU)
		}
		if u, c, ok := t.hostIf(n.Name == self, now, (*hostUsage).memoryAt); ok {
			mem.add(UsageFromProc, n.Name, u, c)
		} else if m, ok := metrics[n.Name]; ok {
			mem.add(UsageFromMetricsAPI, n.Name, m.mem, allocMem)
		} else {
			mem.add(UsageFromRequests, n.Name, requests(n.Name).mem, allocMem)
		}
	}
	if cpu.total > 0 && mem.total > 0 {
		tel.CPUUsage, tel.CPUSource = percent(cpu.used, cpu.total), cpu.source()
		tel.MemoryUsage, tel.MemorySource = percent(mem.used, mem.total), mem.source()
	}
	t.cached, t.cachedAt = tel, now
	return tel, nil
}

// hostIf reads this machine's figure when the node is this machine.
func (t *telemetry) hostIf(self bool, now time.Time, read func(*hostUsage, time.Time) (int64, int64, bool)) (used, capacity int64, ok bool) {
	if !self {
		return 0, 0, false
	}
	return read(t.host, now)
}

func (h *hostUsage) cpuAt(now time.Time) (int64, int64, bool) { return h.cpu(now) }
func (h *hostUsage) memoryAt(time.Time) (int64, int64, bool)  { return h.memory() }

// figure sums one resource over the nodes and remembers each node's source.
type figure struct {
	used, total int64
	nodes       map[string][]string // source → node names
}

func (f *figure) add(source, node string, used, total int64) {
	if total <= 0 {
		return
	}
	f.used += used
	f.total += total
	if f.nodes == nil {
		f.nodes = map[string][]string{}
	}
	f.nodes[source] = append(f.nodes[source], node)
}

// source is e.g. "proc on vm-1 + metrics-api on 2 nodes".
func (f *figure) source() string {
	var parts []string
	for _, src := range []string{UsageFromProc, UsageFromMetricsAPI, UsageFromRequests} {
		switch ns := f.nodes[src]; len(ns) {
		case 0:
		case 1:
			parts = append(parts, src+" on "+ns[0])
		default:
			parts = append(parts, fmt.Sprintf("%s on %d nodes", src, len(ns)))
		}
	}
	return strings.Join(parts, " + ")
}

// nodeUsage is CPU in millicores and memory in bytes.
type nodeUsage struct{ cpu, mem int64 }

// requestsByNode sums the requests of scheduled, non-terminated pods per node.
func requestsByNode(pods []any) map[string]nodeUsage {
	out := map[string]nodeUsage{}
	for _, o := range pods {
		p := o.(*corev1.Pod)
		if p.Spec.NodeName == "" || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		c, m := podRequests(p)
		u := out[p.Spec.NodeName]
		u.cpu += c
		u.mem += m
		out[p.Spec.NodeName] = u
	}
	return out
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

// metricsUsage is each node's usage from the metrics API (one small list).
func (t *telemetry) metricsUsage(ctx context.Context) (map[string]nodeUsage, error) {
	raw, err := t.cs.CoreV1().RESTClient().Get().AbsPath("/apis/metrics.k8s.io/v1beta1/nodes").Do(ctx).Raw()
	if err != nil {
		return nil, fmt.Errorf("metrics.k8s.io nodes: %w", err)
	}
	var list struct {
		Items []struct {
			Metadata struct {
				Name string `json:"name"`
			} `json:"metadata"`
			Usage map[corev1.ResourceName]resource.Quantity `json:"usage"`
		} `json:"items"`
	}
	if err := json.Unmarshal(raw, &list); err != nil {
		return nil, fmt.Errorf("decode metrics.k8s.io nodes: %w", err)
	}
	out := map[string]nodeUsage{}
	for _, it := range list.Items {
		c, m := it.Usage[corev1.ResourceCPU], it.Usage[corev1.ResourceMemory]
		out[it.Metadata.Name] = nodeUsage{cpu: c.MilliValue(), mem: m.Value()}
	}
	return out, nil
}
