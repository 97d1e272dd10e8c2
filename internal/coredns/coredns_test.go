package coredns

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
)

func TestMain(m *testing.M) { kubetest.Main(m) }

func corefile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name+".Corefile"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// withoutBlock checks that out is in plus exactly the marked block's lines.
func withoutBlock(t *testing.T, in, out string) {
	t.Helper()
	back, changed := Remove(out)
	if !changed || back != in {
		t.Fatalf("removing the block does not give the original back byte for byte:\n--- original\n%s--- after add+remove\n%s", in, back)
	}
}

func TestAddPutsTheRuleInTheKubernetesServerBlockAndRemoveRestoresEveryByte(t *testing.T) {
	for _, name := range []string{"kubeadm", "k3s", "noreload"} {
		t.Run(name, func(t *testing.T) {
			in := corefile(t, name)
			out, changed, err := Add(in, "pipeops.internal", "k8s.example")
			if err != nil || !changed {
				t.Fatalf("Add = changed %v, %v", changed, err)
			}
			withoutBlock(t, in, out)
			// The block sits right after the opening line of the server block
			// with the kubernetes plugin, indented like its directives.
			ls := strings.Split(out, "\n")
			open := -1
			for i, l := range ls {
				if strings.HasPrefix(l, ".:53 {") {
					open = i
				}
			}
			indent := leading(ls[open+8]) // the original first directive, after the 7-line block
			if !strings.HasPrefix(ls[open+1], indent+"# BEGIN pipeops-agent:") || ls[open+2] != indent+"rewrite stop {" ||
				ls[open+3] != indent+`    name regex (.+)\.pipeops\.internal\.$ {1}.k8s.example.` ||
				ls[open+4] != indent+`    answer name (.+)\.k8s\.example\.$ {1}.pipeops.internal.` || ls[open+6] != indent+"# END pipeops-agent" {
				t.Errorf("block not where expected:\n%s", out)
			}
			// Adding again changes nothing; a new cluster domain updates the block in place.
			if again, changed, _ := Add(out, "pipeops.internal", "k8s.example"); changed || again != out {
				t.Errorf("a second Add changed the Corefile")
			}
			upd, changed, err := Add(out, "pipeops.internal", "corp.local")
			if err != nil || !changed || strings.Count(upd, "# BEGIN pipeops-agent") != 1 || !strings.Contains(upd, "{1}.corp.local.") {
				t.Errorf("Add with another domain = %v, %v:\n%s", changed, err, upd)
			}
			withoutBlock(t, in, upd)
		})
	}
}

func TestAddRefusesACorefileWithoutKubernetes(t *testing.T) {
	if _, _, err := Add(".:53 {\n    forward . 8.8.8.8\n}\n", "pipeops.internal", "cluster.local"); err != ErrNoKubernetesBlock {
		t.Fatalf("Add = %v; want ErrNoKubernetesBlock", err)
	}
}

func TestDetectsK3sImportsAndReload(t *testing.T) {
	if !ImportsCustom(corefile(t, "k3s")) || ImportsCustom(corefile(t, "kubeadm")) {
		t.Errorf("ImportsCustom: k3s %v, kubeadm %v; want true, false", ImportsCustom(corefile(t, "k3s")), ImportsCustom(corefile(t, "kubeadm")))
	}
	if !HasReload(corefile(t, "kubeadm")) || HasReload(corefile(t, "noreload")) {
		t.Errorf("HasReload wrong")
	}
}

// coreDNS creates a CoreDNS ConfigMap (and Deployment) like a cluster's,
// in the test's namespace instead of kube-system.
func coreDNS(t *testing.T, env *kubetest.Env, corefileName string, deployment bool) Target {
	t.Helper()
	ctx := t.Context()
	tg := Target{Namespace: env.Namespace, ConfigMap: "coredns", Custom: "coredns-custom", Deployment: "coredns",
		Domain: "pipeops.internal", ClusterDomain: "cluster.local"}
	_, err := env.Client.CoreV1().ConfigMaps(env.Namespace).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "coredns"}, Data: map[string]string{"Corefile": corefile(t, corefileName)}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if deployment {
		one := int32(1)
		labels := map[string]string{"k8s-app": "kube-dns"}
		_, err := env.Client.AppsV1().Deployments(env.Namespace).Create(ctx, &appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Name: "coredns"},
			Spec: appsv1.DeploymentSpec{Replicas: &one, Selector: &metav1.LabelSelector{MatchLabels: labels},
				Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
					Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "coredns", Image: "coredns/coredns:1.12.0"}}}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
	}
	return tg
}

func getCM(t *testing.T, env *kubetest.Env, name string) (*corev1.ConfigMap, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return env.Client.CoreV1().ConfigMaps(env.Namespace).Get(ctx, name, metav1.GetOptions{})
}

func TestKubeadmCorefileIsEditedInPlaceAndRestoredByUndo(t *testing.T) {
	env := kubetest.Cluster(t)
	tg := coreDNS(t, env, "kubeadm", true)
	orig := corefile(t, "kubeadm")

	res, err := Apply(t.Context(), env.Client, tg)
	if err != nil || res.Form != FormCorefile || !res.Changed || res.Restarted {
		t.Fatalf("Apply = %+v, %v; want the Corefile form, changed, no restart (it has reload)", res, err)
	}
	cm, _ := getCM(t, env, "coredns")
	withoutBlock(t, orig, cm.Data["Corefile"])
	rv := cm.ResourceVersion
	if res, err := Apply(t.Context(), env.Client, tg); err != nil || res.Changed {
		t.Fatalf("second Apply = %+v, %v; want no change", res, err)
	}
	if cm, _ := getCM(t, env, "coredns"); cm.ResourceVersion != rv {
		t.Errorf("a second Apply wrote the ConfigMap")
	}
	if _, err := getCM(t, env, "coredns-custom"); !apierrors.IsNotFound(err) {
		t.Errorf("coredns-custom exists (%v); want none outside k3s", err)
	}
	if res, err := Undo(t.Context(), env.Client, tg); err != nil || !res.Changed {
		t.Fatalf("Undo = %+v, %v", res, err)
	}
	if cm, _ := getCM(t, env, "coredns"); cm.Data["Corefile"] != orig {
		t.Errorf("Corefile after Undo differs from the original:\n%s", cm.Data["Corefile"])
	}
	dep, _ := env.Client.AppsV1().Deployments(env.Namespace).Get(t.Context(), "coredns", metav1.GetOptions{})
	if _, ok := dep.Spec.Template.Annotations[restartAnnotation]; ok {
		t.Errorf("CoreDNS was restarted although its Corefile reloads itself")
	}
}

func TestK3sUsesCorednsCustomAndKeepsOtherKeys(t *testing.T) {
	env := kubetest.Cluster(t)
	tg := coreDNS(t, env, "k3s", false)
	orig := corefile(t, "k3s")
	// The admin's own override is already there, and must survive.
	_, err := env.Client.CoreV1().ConfigMaps(env.Namespace).Create(t.Context(), &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "coredns-custom"}, Data: map[string]string{"log.override": "log\n"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	res, err := Apply(t.Context(), env.Client, tg)
	if err != nil || res.Form != FormCustom || !res.Changed {
		t.Fatalf("Apply = %+v, %v; want the coredns-custom form", res, err)
	}
	if cm, _ := getCM(t, env, "coredns"); cm.Data["Corefile"] != orig {
		t.Errorf("k3s's own Corefile was edited (k3s rewrites it on restart)")
	}
	custom, _ := getCM(t, env, "coredns-custom")
	if custom.Data["log.override"] != "log\n" || !strings.Contains(custom.Data[CustomKey], `name regex (.+)\.pipeops\.internal\.$ {1}.cluster.local.`) {
		t.Fatalf("coredns-custom = %v", custom.Data)
	}
	if res, _ := Apply(t.Context(), env.Client, tg); res.Changed {
		t.Errorf("second Apply changed something")
	}
	if _, err := Undo(t.Context(), env.Client, tg); err != nil {
		t.Fatal(err)
	}
	custom, err = getCM(t, env, "coredns-custom")
	if err != nil || custom.Data["log.override"] != "log\n" || hasKey(custom.Data, CustomKey) {
		t.Errorf("coredns-custom after Undo = %v, %v; want only the admin's key", custom, err)
	}
}

func TestK3sCustomConfigMapTheAgentCreatedIsDeletedByUndo(t *testing.T) {
	env := kubetest.Cluster(t)
	tg := coreDNS(t, env, "k3s", false)
	if _, err := Apply(t.Context(), env.Client, tg); err != nil {
		t.Fatal(err)
	}
	if cm, err := getCM(t, env, "coredns-custom"); err != nil || cm.Labels[managedBy] != "pipeops-agent" {
		t.Fatalf("coredns-custom = %v, %v; want one created and labelled by the agent", cm, err)
	}
	if _, err := Undo(t.Context(), env.Client, tg); err != nil {
		t.Fatal(err)
	}
	if _, err := getCM(t, env, "coredns-custom"); !apierrors.IsNotFound(err) {
		t.Errorf("coredns-custom still exists after Undo (%v)", err)
	}
}

func TestACorefileWithoutReloadRestartsCoreDNS(t *testing.T) {
	env := kubetest.Cluster(t)
	tg := coreDNS(t, env, "noreload", true)
	tg.ClusterDomain = "k8s.example"
	res, err := Apply(t.Context(), env.Client, tg)
	if err != nil || !res.Restarted {
		t.Fatalf("Apply = %+v, %v; want a restart", res, err)
	}
	dep, _ := env.Client.AppsV1().Deployments(env.Namespace).Get(t.Context(), "coredns", metav1.GetOptions{})
	first := dep.Spec.Template.Annotations[restartAnnotation]
	if first == "" {
		t.Fatal("no restart annotation on the pod template")
	}
	if res, _ := Apply(t.Context(), env.Client, tg); res.Restarted {
		t.Errorf("an unchanged Apply restarted CoreDNS again")
	}
	if res, err := Undo(t.Context(), env.Client, tg); err != nil || !res.Restarted {
		t.Fatalf("Undo = %+v, %v; want a restart", res, err)
	}
	dep, _ = env.Client.AppsV1().Deployments(env.Namespace).Get(t.Context(), "coredns", metav1.GetOptions{})
	if dep.Spec.Template.Annotations[restartAnnotation] == first {
		t.Errorf("Undo did not roll CoreDNS")
	}
}
