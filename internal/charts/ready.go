package charts

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
	"helm.sh/helm/v3/pkg/releaseutil"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// object is the part of a manifest document the manager reads.
type object struct {
	Kind     string `yaml:"kind"`
	Metadata struct {
		Name      string `yaml:"name"`
		Namespace string `yaml:"namespace"`
	} `yaml:"metadata"`
	Spec struct {
		ClusterIP string `yaml:"clusterIP"`
		Ports     []struct {
			Port int `yaml:"port"`
		} `yaml:"ports"`
	} `yaml:"spec"`
}

// objects parses a release manifest; objects without a namespace get the
// release's, as Helm applies them.
func objects(manifest, namespace string) []object {
	docs := releaseutil.SplitManifests(manifest)
	keys := make([]string, 0, len(docs))
	for k := range docs {
		keys = append(keys, k)
	}
	sort.Sort(releaseutil.BySplitManifestsOrder(keys))
	var out []object
	for _, k := range keys {
		var o object
		if err := yaml.Unmarshal([]byte(docs[k]), &o); err != nil || o.Kind == "" {
			continue
		}
		if o.Metadata.Namespace == "" {
			o.Metadata.Namespace = namespace
		}
		out = append(out, o)
	}
	return out
}

type serviceInfo struct {
	Name, Namespace string
	Headless        bool
	Ports           []int
}

func (s serviceInfo) hasPort(p int) bool { return slices.Contains(s.Ports, p) }

func services(manifest, namespace string) []serviceInfo {
	var out []serviceInfo
	for _, o := range objects(manifest, namespace) {
		if o.Kind != "Service" {
			continue
		}
		s := serviceInfo{Name: o.Metadata.Name, Namespace: o.Metadata.Namespace, Headless: o.Spec.ClusterIP == "None"}
		for _, p := range o.Spec.Ports {
			s.Ports = append(s.Ports, p.Port)
		}
		out = append(out, s)
	}
	return out
}

// NotReadyError is a readiness wait that ran out of time. Its message names
// every workload that is not ready and why, e.g. the scheduler's reason.
type NotReadyError struct {
	After   time.Duration
	Pending []string
}

func (e *NotReadyError) Error() string {
	return fmt.Sprintf("not ready after %s: %s", e.After, strings.Join(e.Pending, "; "))
}

// waitReady polls the release's Deployments, StatefulSets and DaemonSets
// until all are ready (kstatus-style: observed generation current, updated
// and available replicas at the desired count) or the timeout passes.
// Services of type LoadBalancer are not waited for: a VM often has no load
// balancer, and Traefik works through its node ports anyway.
func (m *Engine) waitReady(ctx context.Context, cs kubernetes.Interface, manifest, namespace string) error {
	objs := objects(manifest, namespace)
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, m.opts.ReadyTimeout)
	defer cancel()
	t := time.NewTicker(m.opts.PollInterval)
	defer t.Stop()
	for {
		pending := notReady(ctx, cs, objs, false)
		if len(pending) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			if err := parent.Err(); err != nil {
				return fmt.Errorf("wait for readiness: %w", err)
			}
			// Explain with the pods' own reasons, under a fresh deadline.
			ectx, ecancel := context.WithTimeout(context.WithoutCancel(parent), 10*time.Second)
			defer ecancel()
			if pending := notReady(ectx, cs, objs, true); len(pending) > 0 {
				return &NotReadyError{After: m.opts.ReadyTimeout, Pending: pending}
			}
			return nil // became ready at the last moment
		case <-t.C:
		}
	}
}

// notReady lists the workloads that are not ready; explain adds why, from
// one of their pods.
func notReady(ctx context.Context, cs kubernetes.Interface, objs []object, explain bool) []string {
	var out []string
	for _, o := range objs {
		ns, name := o.Metadata.Namespace, o.Metadata.Name
		var msg string
		var sel *metav1.LabelSelector
		switch o.Kind {
		case "Deployment":
			d, err := cs.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				msg = err.Error()
				break
			}
			sel, msg = d.Spec.Selector, deploymentNotReady(d)
		case "StatefulSet":
			s, err := cs.AppsV1().StatefulSets(ns).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				msg = err.Error()
				break
			}
			sel, msg = s.Spec.Selector, statefulSetNotReady(s)
		case "DaemonSet":
			d, err := cs.AppsV1().DaemonSets(ns).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				msg = err.Error()
				break
			}
			sel, msg = d.Spec.Selector, daemonSetNotReady(d)
		default:
			continue
		}
		if msg == "" {
			continue
		}
		line := fmt.Sprintf("%s %s/%s: %s", o.Kind, ns, name, msg)
		if explain && sel != nil {
			if why := podReason(ctx, cs, ns, sel); why != "" {
				line += " (" + why + ")"
			}
		}
		out = append(out, line)
	}
	return out
}

func replicas(p *int32) int32 {
	if p == nil {
		return 1
	}
	return *p
}

func deploymentNotReady(d *appsv1.Deployment) string {
	want := replicas(d.Spec.Replicas)
	switch {
	case d.Status.ObservedGeneration < d.Generation:
		return "rollout not yet observed"
	case d.Status.UpdatedReplicas < want:
		return fmt.Sprintf("%d of %d replicas updated", d.Status.UpdatedReplicas, want)
	case d.Status.AvailableReplicas < want:
		return fmt.Sprintf("%d of %d replicas available", d.Status.AvailableReplicas, want)
	}
	return ""
}

func statefulSetNotReady(s *appsv1.StatefulSet) string {
	want := replicas(s.Spec.Replicas)
	switch {
	case s.Status.ObservedGeneration < s.Generation:
		return "rollout not yet observed"
	case s.Status.ReadyReplicas < want:
		return fmt.Sprintf("%d of %d replicas ready", s.Status.ReadyReplicas, want)
	case s.Status.UpdatedReplicas < want:
		return fmt.Sprintf("%d of %d replicas updated", s.Status.UpdatedReplicas, want)
	}
	return ""
}

func daemonSetNotReady(d *appsv1.DaemonSet) string {
	want := d.Status.DesiredNumberScheduled
	switch {
	case d.Status.ObservedGeneration < d.Generation:
		return "rollout not yet observed"
	case d.Status.UpdatedNumberScheduled < want:
		return fmt.Sprintf("%d of %d pods updated", d.Status.UpdatedNumberScheduled, want)
	case d.Status.NumberReady < want:
		return fmt.Sprintf("%d of %d pods ready", d.Status.NumberReady, want)
	}
	return ""
}

// podReason explains the first pod of sel that is not ready: unschedulable,
// an image that cannot be pulled, a crash loop, or a failing probe.
func podReason(ctx context.Context, cs kubernetes.Interface, ns string, sel *metav1.LabelSelector) string {
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		return ""
	}
	pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: s.String(), Limit: 20})
	if err != nil || len(pods.Items) == 0 {
		return "no pods"
	}
	for _, p := range pods.Items {
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodScheduled && c.Status != corev1.ConditionTrue {
				return fmt.Sprintf("pod %s unschedulable: %s", p.Name, c.Message)
			}
		}
		for _, st := range p.Status.ContainerStatuses {
			if w := st.State.Waiting; w != nil && w.Reason != "" {
				return fmt.Sprintf("pod %s container %s: %s %s", p.Name, st.Name, w.Reason, w.Message)
			}
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status != corev1.ConditionTrue {
				return fmt.Sprintf("pod %s not ready: %s", p.Name, strings.TrimSpace(c.Reason+" "+c.Message))
			}
		}
	}
	return ""
}
