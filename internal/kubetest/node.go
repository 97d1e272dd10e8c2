package kubetest

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
)

// NodeName is the FULL cluster's fake node.
const NodeName = "kwok-node-0"

// Node is what the FULL cluster's node does behind its kubelet API (kwok's
// server; scripts/k8s/cluster.sh): where exec runs, which file logs and
// attach read, and where port-forward goes, unless a per-pod object says
// otherwise (SetPodLogs, SetPodPortForward, SetPodExecDir).
type Node struct {
	ExecDir         string // exec's working directory
	LogFile         string // CRI-format log file of every container
	PortForwardPort int    // any pod port forwards to 127.0.0.1:PortForwardPort
}

// RequireNode is RequireFull for tests that reach the node's kubelet API
// (exec, attach, logs, port-forward): it fails (CI) or skips when the
// cluster was started without it.
func RequireNode(t testing.TB) (*Env, Node) {
	t.Helper()
	env := RequireFull(t)
	var n Node
	if env.Dir != "" {
		if m, err := readClusterEnv(env.Dir); err == nil {
			n.ExecDir, n.LogFile = m["NODE_EXEC_DIR"], m["NODE_LOG_FILE"]
			n.PortForwardPort, _ = strconv.Atoi(m["PORTFORWARD_PORT"])
		}
	}
	if n.ExecDir == "" || n.LogFile == "" || n.PortForwardPort == 0 {
		missing(t, "the test cluster at "+env.Kubeconfig+" has no kubelet API for its node (cluster.env lacks NODE_EXEC_DIR, NODE_LOG_FILE, PORTFORWARD_PORT); restart it with the current FULL=1 scripts/k8s/cluster.sh")
	}
	return env, n
}

// RunningPod creates a pod named name in the test's namespace, bound to the
// fake node, and waits until kwok reports it Running and Ready.
func (e *Env) RunningPod(t testing.TB, name string) *corev1.Pod {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.PodSpec{
		NodeName:   NodeName,
		Containers: []corev1.Container{{Name: "main", Image: "pipeops.test/none"}},
	}}
	if _, err := e.Client.CoreV1().Pods(e.Namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatalf("kubetest: create pod %s: %v", name, err)
	}
	last := "not seen"
	for {
		p, err := e.Client.CoreV1().Pods(e.Namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			last = err.Error()
		} else {
			last = fmt.Sprintf("phase %s, conditions %v", p.Status.Phase, p.Status.Conditions)
		}
		if err == nil && p.Status.Phase == corev1.PodRunning {
			for _, c := range p.Status.Conditions {
				if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
					return p
				}
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("kubetest: pod %s/%s not Running and Ready on %s within 60s (last: %s)", e.Namespace, name, NodeName, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// SetPodLogs points the logs and attach of pod's containers at file (CRI
// format: "<RFC3339Nano> stdout F <line>", see CRILine).
func (e *Env) SetPodLogs(t testing.TB, pod, file string) {
	t.Helper()
	e.kwokObject(t, "logs", "Logs", pod, map[string]any{"logs": []any{map[string]any{"logsFile": file, "follow": true}}})
	e.kwokObject(t, "attaches", "Attach", pod, map[string]any{"attaches": []any{map[string]any{"logsFile": file}}})
}

// SetPodPortForward forwards every port of pod to 127.0.0.1:port.
func (e *Env) SetPodPortForward(t testing.TB, pod string, port int) {
	t.Helper()
	e.kwokObject(t, "portforwards", "PortForward", pod, map[string]any{
		"forwards": []any{map[string]any{"target": map[string]any{"address": "127.0.0.1", "port": int64(port)}}}})
}

// SetPodExecDir runs pod's exec commands in dir.
func (e *Env) SetPodExecDir(t testing.TB, pod, dir string) {
	t.Helper()
	e.kwokObject(t, "execs", "Exec", pod, map[string]any{"execs": []any{map[string]any{"local": map[string]any{"workDir": dir}}}})
}

// CRILine is one line of a CRI log file, as a kubelet's runtime writes it.
func CRILine(stream, line string) string {
	return fmt.Sprintf("%s %s F %s\n", time.Now().UTC().Format(time.RFC3339Nano), stream, line)
}

// kwokObject creates kwok's per-pod simulation object (kwok.x-k8s.io/v1alpha1)
// named after the pod; kwok matches it by name and namespace.
func (e *Env) kwokObject(t testing.TB, resource, kind, pod string, spec map[string]any) {
	t.Helper()
	dc, err := dynamic.NewForConfig(e.Config)
	if err != nil {
		t.Fatal(err)
	}
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": kind,
		"metadata": map[string]any{"name": pod, "namespace": e.Namespace},
		"spec":     spec,
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	gvr := schema.GroupVersionResource{Group: "kwok.x-k8s.io", Version: "v1alpha1", Resource: resource}
	if _, err := dc.Resource(gvr).Namespace(e.Namespace).Create(ctx, obj, metav1.CreateOptions{}); err != nil {
		t.Fatalf("kubetest: create %s %s/%s: %v", kind, e.Namespace, pod, err)
	}
}
