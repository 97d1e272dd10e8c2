package coredns

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// Target says which CoreDNS to edit and what to map.
type Target struct {
	Namespace  string // kube-system
	ConfigMap  string // coredns (key Corefile)
	Custom     string // coredns-custom (k3s)
	Deployment string // coredns, restarted when it does not reload by itself
	// Domain resolves as ClusterDomain: pipeops.internal → cluster.local.
	Domain, ClusterDomain string
}

// DefaultTarget is the usual place of the cluster's CoreDNS.
func DefaultTarget(clusterDomain string) Target {
	return Target{Namespace: "kube-system", ConfigMap: "coredns", Custom: "coredns-custom", Deployment: "coredns",
		Domain: "pipeops.internal", ClusterDomain: clusterDomain}
}

// Forms of the edit.
const (
	FormCorefile = "Corefile"       // the marked block in ConfigMap coredns
	FormCustom   = "coredns-custom" // k3s: key pipeops.override of ConfigMap coredns-custom
)

// Result is what Apply or Undo did.
type Result struct {
	Form      string
	Changed   bool
	Restarted bool // the Deployment was rolled because the Corefile has no reload plugin
	// Domain and ClusterDomain are the Target's.
	Domain, ClusterDomain string
}

func (r Result) String() string {
	s := fmt.Sprintf("*.%s resolves as *.%s (%s)", r.Domain, r.ClusterDomain, r.Form)
	if r.Restarted {
		s += "; CoreDNS restarted (no reload plugin)"
	}
	return s
}

const managedBy = "app.kubernetes.io/managed-by"

// Apply puts the rewrite in place: in coredns-custom when the Corefile
// imports it (k3s), else as the marked block of the Corefile. It changes
// nothing when the rule is already there, and removes a copy left in the
// other place.
func Apply(ctx context.Context, cs kubernetes.Interface, t Target) (Result, error) {
	cm, err := cs.CoreV1().ConfigMaps(t.Namespace).Get(ctx, t.ConfigMap, metav1.GetOptions{})
	if err != nil {
		return Result{}, fmt.Errorf("read ConfigMap %s/%s: %w", t.Namespace, t.ConfigMap, err)
	}
	corefile, ok := cm.Data["Corefile"]
	if !ok {
		return Result{}, fmt.Errorf("ConfigMap %s/%s has no Corefile key", t.Namespace, t.ConfigMap)
	}
	res := Result{Form: FormCorefile, Domain: t.Domain, ClusterDomain: t.ClusterDomain}
	if ImportsCustom(corefile) {
		res.Form = FormCustom
		if res.Changed, err = setCustom(ctx, cs, t, CustomOverride(t.Domain, t.ClusterDomain)); err != nil {
			return res, err
		}
		if out, stale := Remove(corefile); stale { // from before k3s imported coredns-custom
			if err := updateCorefile(ctx, cs, cm, out); err != nil {
				return res, err
			}
			res.Changed = true
		}
	} else {
		out, changed, err := Add(corefile, t.Domain, t.ClusterDomain)
		if err != nil {
			return res, fmt.Errorf("ConfigMap %s/%s: %w", t.Namespace, t.ConfigMap, err)
		}
		if changed {
			if err := updateCorefile(ctx, cs, cm, out); err != nil {
				return res, err
			}
			res.Changed = true
		}
	}
	if res.Changed && !HasReload(corefile) {
		res.Restarted, err = restart(ctx, cs, t, corefile)
	}
	return res, err
}

// Undo takes the rewrite out of both places. A coredns-custom ConfigMap
// the agent created and that holds nothing else is deleted.
func Undo(ctx context.Context, cs kubernetes.Interface, t Target) (Result, error) {
	res := Result{Form: FormCorefile, Domain: t.Domain, ClusterDomain: t.ClusterDomain}
	cm, err := cs.CoreV1().ConfigMaps(t.Namespace).Get(ctx, t.ConfigMap, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return res, nil
	}
	if err != nil {
		return res, fmt.Errorf("read ConfigMap %s/%s: %w", t.Namespace, t.ConfigMap, err)
	}
	corefile := cm.Data["Corefile"]
	if ImportsCustom(corefile) {
		res.Form = FormCustom
	}
	if out, changed := Remove(corefile); changed {
		if err := updateCorefile(ctx, cs, cm, out); err != nil {
			return res, err
		}
		res.Changed = true
	}
	if changed, err := setCustom(ctx, cs, t, ""); err != nil {
		return res, err
	} else if changed {
		res.Changed = true
	}
	if res.Changed && !HasReload(corefile) {
		res.Restarted, err = restart(ctx, cs, t, corefile)
	}
	return res, err
}

func updateCorefile(ctx context.Context, cs kubernetes.Interface, cm *corev1.ConfigMap, corefile string) error {
	cm = cm.DeepCopy()
	cm.Data["Corefile"] = corefile
	// An Update carries the resourceVersion read: a concurrent edit fails it
	// (retried next round) instead of being overwritten.
	if _, err := cs.CoreV1().ConfigMaps(cm.Namespace).Update(ctx, cm, metav1.UpdateOptions{FieldManager: "pipeops-agent"}); err != nil {
		return fmt.Errorf("update ConfigMap %s/%s: %w", cm.Namespace, cm.Name, err)
	}
	return nil
}

// setCustom sets (content != "") or deletes the agent's key of the
// coredns-custom ConfigMap, creating the ConfigMap when needed.
func setCustom(ctx context.Context, cs kubernetes.Interface, t Target, content string) (bool, error) {
	cms := cs.CoreV1().ConfigMaps(t.Namespace)
	cm, err := cms.Get(ctx, t.Custom, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err) && content == "":
		return false, nil
	case apierrors.IsNotFound(err):
		cm = &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: t.Custom, Namespace: t.Namespace,
			Labels: map[string]string{managedBy: "pipeops-agent"}}, Data: map[string]string{CustomKey: content}}
		if _, err := cms.Create(ctx, cm, metav1.CreateOptions{FieldManager: "pipeops-agent"}); err != nil {
			return false, fmt.Errorf("create ConfigMap %s/%s: %w", t.Namespace, t.Custom, err)
		}
		return true, nil
	case err != nil:
		return false, fmt.Errorf("read ConfigMap %s/%s: %w", t.Namespace, t.Custom, err)
	}
	if cm.Data[CustomKey] == content && (content != "" || !hasKey(cm.Data, CustomKey)) {
		return false, nil
	}
	cm = cm.DeepCopy()
	if content == "" {
		delete(cm.Data, CustomKey)
		if len(cm.Data) == 0 && len(cm.BinaryData) == 0 && cm.Labels[managedBy] == "pipeops-agent" {
			if err := cms.Delete(ctx, t.Custom, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{ResourceVersion: &cm.ResourceVersion}}); err != nil && !apierrors.IsNotFound(err) {
				return false, fmt.Errorf("delete ConfigMap %s/%s: %w", t.Namespace, t.Custom, err)
			}
			return true, nil
		}
	} else {
		if cm.Data == nil {
			cm.Data = map[string]string{}
		}
		cm.Data[CustomKey] = content
	}
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{FieldManager: "pipeops-agent"}); err != nil {
		return false, fmt.Errorf("update ConfigMap %s/%s: %w", t.Namespace, t.Custom, err)
	}
	return true, nil
}

func hasKey(m map[string]string, k string) bool { _, ok := m[k]; return ok }

// restartAnnotation on the pod template rolls CoreDNS when its Corefile has
// no reload plugin; the value changes with each edit.
const restartAnnotation = "pipeops.io/coredns-rewrite"

// restart rolls the CoreDNS Deployment (a rolling update, as kubectl
// rollout restart does), so the new Corefile is read. No Deployment, no restart.
func restart(ctx context.Context, cs kubernetes.Interface, t Target, corefile string) (bool, error) {
	sum := sha256.Sum256([]byte(corefile + "\x00" + t.Domain + "\x00" + t.ClusterDomain))
	patch, _ := json.Marshal(map[string]any{"spec": map[string]any{"template": map[string]any{"metadata": map[string]any{
		"annotations": map[string]string{restartAnnotation: hex.EncodeToString(sum[:8])}}}}})
	_, err := cs.AppsV1().Deployments(t.Namespace).Patch(ctx, t.Deployment, types.StrategicMergePatchType, patch,
		metav1.PatchOptions{FieldManager: "pipeops-agent"})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("restart Deployment %s/%s to load the Corefile: %w", t.Namespace, t.Deployment, err)
	}
	return true, nil
}
