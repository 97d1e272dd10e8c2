package attack

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/pipeops/pipeops-vm-agent/internal/devplane"
	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

// The control plane holds the agent's k8s_service_token and may reach the
// API server with it directly, not only through the agent. These tests use
// that token, exactly as registered, against the real API server.

// identServiceToken runs the agent until it registered and returns the
// token the control plane received, with the agent and the front door
// (the control plane's way through the agent's proxy).
func identServiceToken(t *testing.T, env *kubetest.Env) (string, *identAgent, kubernetes.Interface) {
	t.Helper()
	dp, url := identPlainPlane(t)
	a := identStartAgent(t, env, url, "", "")
	id := identRegistered(t, dp, a)
	// A call made while the agent moves from the controller to the gateway
	// can land on the session that is ending: wait for a heartbeat on the
	// session it keeps.
	testbin.Eventually(t, 30*time.Second, "a heartbeat after the move to the gateway", func() bool {
		for _, c := range dp.Clusters() {
			if c.ID == id && c.Connected && c.Mode == devplane.KindGateway && c.Heartbeats > 0 {
				return true
			}
		}
		return false
	}, a.logs)
	front, err := kubernetes.NewForConfig(&rest.Config{Host: url + "/clusters/" + id + "/k8s", QPS: 100, Burst: 200})
	if err != nil {
		t.Fatal(err)
	}
	return dp.ServiceToken(id), a, front
}

// identTarget is a ServiceAccount in kube-system an attacker would want a
// token for (think of one bound to cluster-admin).
func identTarget(t *testing.T, env *kubetest.Env) string {
	t.Helper()
	name := "attack-target-" + strings.TrimPrefix(env.Namespace, "t-")
	if len(name) > 60 {
		name = name[:60]
	}
	name = strings.TrimRight(name, "-")
	ctx := context.Background()
	if _, err := env.Client.CoreV1().ServiceAccounts("kube-system").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}},
		metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = env.Client.CoreV1().ServiceAccounts("kube-system").Delete(context.Background(), name, metav1.DeleteOptions{})
	})
	return name
}

func identForbidden(t *testing.T, what string, err error, cleanup func()) {
	t.Helper()
	if err == nil {
		cleanup()
		t.Errorf("%s: allowed; want 403 Forbidden", what)
		return
	}
	if !apierrors.IsForbidden(err) {
		t.Errorf("%s: %v; want 403 Forbidden", what, err)
	}
}

func TestTheServiceAccountTokenCannotMintAKubeSystemToken(t *testing.T) {
	env := kubetest.RequireFull(t) // kube-controller-manager fills legacy token Secrets
	tok, _, _ := identServiceToken(t, env)
	target := identTarget(t, env)
	cs := identAsToken(t, env, tok)
	ctx := context.Background()

	_, err := cs.CoreV1().ServiceAccounts("kube-system").CreateToken(ctx, target, &authnv1.TokenRequest{}, metav1.CreateOptions{})
	identForbidden(t, "TokenRequest for kube-system/"+target, err, func() {})

	// The older way: a token Secret annotated with the ServiceAccount, which
	// the token controller fills with a token that never expires.
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: target + "-token", Annotations: map[string]string{
		corev1.ServiceAccountNameKey: target}}, Type: corev1.SecretTypeServiceAccountToken}
	_, err = cs.CoreV1().Secrets("kube-system").Create(ctx, sec, metav1.CreateOptions{})
	identForbidden(t, "a token Secret for kube-system/"+target, err, func() {
		_ = env.Client.CoreV1().Secrets("kube-system").Delete(ctx, sec.Name, metav1.DeleteOptions{})
	})
}

func TestTheServiceAccountTokenCannotCreateAPodInKubeSystem(t *testing.T) {
	env := kubetest.Cluster(t)
	tok, _, front := identServiceToken(t, env)
	target := identTarget(t, env)
	ctx := context.Background()
	// A pod in kube-system may run as any ServiceAccount there and read its
	// token from the pod's filesystem.
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: target}, Spec: corev1.PodSpec{ServiceAccountName: target,
		Containers: []corev1.Container{{Name: "steal", Image: "registry.example/steal:1"}}}}
	dep := identDeployment(target)
	dep.Spec.Template.Spec.ServiceAccountName = target
	for _, via := range []struct {
		name string
		cs   kubernetes.Interface
	}{{"the token", identAsToken(t, env, tok)}, {"the agent's proxy", front}} {
		_, err := via.cs.CoreV1().Pods("kube-system").Create(ctx, pod, metav1.CreateOptions{})
		identForbidden(t, "a pod in kube-system through "+via.name, err, func() {
			_ = env.Client.CoreV1().Pods("kube-system").Delete(ctx, pod.Name, metav1.DeleteOptions{})
		})
		_, err = via.cs.AppsV1().Deployments("kube-system").Create(ctx, dep, metav1.CreateOptions{})
		identForbidden(t, "a Deployment in kube-system through "+via.name, err, func() {
			_ = env.Client.AppsV1().Deployments("kube-system").Delete(ctx, dep.Name, metav1.DeleteOptions{})
		})
	}
}

func TestTheServiceAccountTokenCannotReadKubeSystemSecrets(t *testing.T) {
	env := kubetest.Cluster(t)
	tok, _, front := identServiceToken(t, env)
	ctx := context.Background()
	name := identTarget(t, env) // a Secret named like it
	if _, err := env.Client.CoreV1().Secrets("kube-system").Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name},
		StringData: map[string]string{"password": "hunter2"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = env.Client.CoreV1().Secrets("kube-system").Delete(context.Background(), name, metav1.DeleteOptions{})
	})
	for _, via := range []struct {
		name string
		cs   kubernetes.Interface
	}{{"the token", identAsToken(t, env, tok)}, {"the agent's proxy", front}} {
		_, err := via.cs.CoreV1().Secrets("kube-system").Get(ctx, name, metav1.GetOptions{})
		identForbidden(t, "get a kube-system Secret through "+via.name, err, func() {})
		_, err = via.cs.CoreV1().Secrets("kube-system").List(ctx, metav1.ListOptions{})
		identForbidden(t, "list kube-system Secrets through "+via.name, err, func() {})
		_, err = via.cs.CoreV1().Secrets("").List(ctx, metav1.ListOptions{})
		identForbidden(t, "list every Secret through "+via.name, err, func() {})
	}
}

// Not an attack: what the control plane needs (protocol.md §14.3, §6.8,
// §14.2) keeps working with the narrowed identity.
func TestTheControlPlaneStillProvisionsDeploysExecsAndProxiesInItsNamespaces(t *testing.T) {
	env := kubetest.Cluster(t)
	tok, _, front := identServiceToken(t, env)
	ctx := context.Background()
	ns := env.Namespace + "-project"
	t.Cleanup(func() { _ = env.Client.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{}) })

	// Through the agent's proxy, as the control plane provisions a project:
	// the namespace, then at once what goes into it.
	if _, err := front.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace through the proxy: %v", err)
	}
	if _, err := front.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "registry"},
		StringData: map[string]string{"k": "v"}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create a Secret in the new namespace: %v", err)
	}
	if _, err := front.AppsV1().Deployments(ns).Create(ctx, identDeployment("web"), metav1.CreateOptions{}); err != nil {
		t.Fatalf("deploy into the new namespace: %v", err)
	}
	if _, err := front.CoreV1().Services(ns).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"}, Ports: []corev1.ServicePort{{Port: 80}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create a Service in the new namespace: %v", err)
	}
	if _, err := front.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{}); err != nil {
		t.Fatalf("read kube-system pods: %v", err)
	}
	// With the token itself: exec, attach, port-forward and the service proxy there.
	cs := identAsToken(t, env, tok)
	for _, a := range []authzv1.ResourceAttributes{
		{Resource: "pods", Subresource: "exec", Verb: "create"}, {Resource: "pods", Subresource: "exec", Verb: "get"},
		{Resource: "pods", Subresource: "attach", Verb: "create"},
		{Resource: "pods", Subresource: "portforward", Verb: "create"}, {Resource: "pods", Subresource: "portforward", Verb: "get"},
		{Resource: "services", Subresource: "proxy", Verb: "get"}, {Resource: "services", Subresource: "proxy", Verb: "create"},
		{Resource: "namespaces", Verb: "create"},
	} {
		if a.Resource != "namespaces" {
			a.Namespace = ns
		}
		r, err := cs.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx,
			&authzv1.SelfSubjectAccessReview{Spec: authzv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &a}}, metav1.CreateOptions{})
		if err != nil || !r.Status.Allowed {
			t.Errorf("%s %s/%s in %q: not allowed (%v)", a.Verb, a.Resource, a.Subresource, a.Namespace, err)
		}
	}
}

func TestUninstallPurgeRevokesTheServiceAccountToken(t *testing.T) {
	env := kubetest.RequireFull(t) // the Secret token the control plane holds needs kube-controller-manager
	tok, a, _ := identServiceToken(t, env)
	ctx := context.Background()
	cs := identAsToken(t, env, tok)
	if _, err := cs.CoreV1().Namespaces().List(ctx, metav1.ListOptions{}); err != nil {
		t.Fatalf("the registered token does not work before the uninstall: %v", err)
	}
	a.stop()

	// A script install below root: the agent binary and its configuration
	// where pipeopsctl looks for them; systemctl is a stub.
	root := testbin.ShortTempDir(t)
	for p, src := range map[string]string{"usr/bin/pipeops-agent": a.bin, "etc/pipeops/agent.yaml": a.cfg} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(root, filepath.Dir(p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, p), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	testbin.StubSystemctl(t)
	out, err := exec.Command(testbin.Build(t, "pipeopsctl"), "uninstall", "--purge", "--root", root).CombinedOutput()
	if err != nil {
		t.Fatalf("pipeopsctl uninstall --purge: %v\n%s", err, out)
	}
	for _, want := range []string{
		fmt.Sprintf("removed serviceaccount %s/pipeops-agent", env.Namespace),
		fmt.Sprintf("removed secret %s/pipeops-agent-token-", env.Namespace),
		fmt.Sprintf("removed clusterrolebinding %s", a.names.ClusterRole),
		fmt.Sprintf("removed clusterrole %s", a.names.WorkloadRole()),
		"removed rolebinding ",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("pipeopsctl uninstall --purge does not say %q:\n%s", want, out)
		}
	}
	testbin.Eventually(t, 20*time.Second, "the old token to be rejected with 401", func() bool {
		_, err := cs.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
		return apierrors.IsUnauthorized(err)
	}, func() string { return string(out) })
}

func identDeployment(name string) *appsv1.Deployment {
	labels := map[string]string{"app": name}
	return &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: appsv1.DeploymentSpec{
		Selector: &metav1.LabelSelector{MatchLabels: labels},
		Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: name, Image: "registry.example/" + name + ":1"}}}},
	}}
}
