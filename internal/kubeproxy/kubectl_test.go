package kubeproxy_test

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
)

// serviceAccountIdentity creates a ServiceAccount in the test namespace
// with rules (a Role there) and returns a rest.Config that carries only
// its token and the cluster CA, like the agent's proxy identity.
func serviceAccountIdentity(t testing.TB, env *kubetest.Env, name string, rules []rbacv1.PolicyRule) *rest.Config {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ns := env.Namespace
	cs := env.Client
	if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if len(rules) > 0 {
		if _, err := cs.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: rules}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		rb := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name},
			RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: name},
			Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: name, Namespace: ns}}}
		if _, err := cs.RbacV1().RoleBindings(ns).Create(ctx, rb, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	exp := int64(3600)
	tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, &authv1.TokenRequest{Spec: authv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := rest.AnonymousClientConfig(env.Config)
	cfg.BearerToken = tr.Status.Token
	return cfg
}

var configMapRules = []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"*"}}}

const configMapYAML = `apiVersion: v1
kind: ConfigMap
metadata:
  name: via-agent
data:
  greeting: hello through the agent
`

func TestKubectlGetApplyDeleteWorkThroughTheAgent(t *testing.T) {
	env := kubetest.Cluster(t)
	s := startStack(t, serviceAccountIdentity(t, env, "proxy", configMapRules), nil)
	kc := s.kubeconfig(t, "")
	ns := env.Namespace

	if out, err := kubectl(t, env, kc, configMapYAML, "apply", "-n", ns, "-f", "-"); err != nil || !strings.Contains(out, "configmap/via-agent created") {
		t.Fatalf("kubectl apply = %q, %v; want created", out, err)
	}
	out, err := kubectl(t, env, kc, "", "get", "configmap", "via-agent", "-n", ns, "-o", "yaml")
	if err != nil || !strings.Contains(out, "greeting: hello through the agent") {
		t.Fatalf("kubectl get -o yaml = %q, %v; want the data", out, err)
	}
	if out, err := kubectl(t, env, kc, "", "get", "configmaps", "-n", ns); err != nil || !strings.Contains(out, "via-agent") {
		t.Fatalf("kubectl get = %q, %v; want the list", out, err)
	}
	// A second apply is a PATCH with a body: unchanged.
	if out, err := kubectl(t, env, kc, configMapYAML, "apply", "-n", ns, "-f", "-"); err != nil || !strings.Contains(out, "unchanged") {
		t.Fatalf("second kubectl apply = %q, %v; want unchanged", out, err)
	}
	if out, err := kubectl(t, env, kc, "", "delete", "configmap", "via-agent", "-n", ns); err != nil || !strings.Contains(out, "deleted") {
		t.Fatalf("kubectl delete = %q, %v", out, err)
	}
	_, err = kubectl(t, env, kc, "", "get", "configmap", "via-agent", "-n", ns)
	if err == nil || !strings.Contains(err.Error(), "NotFound") {
		t.Fatalf("kubectl get after delete error = %v; want NotFound from the API server", err)
	}
}

func TestKubectlIdentityIsTheServiceAccountOrThePassedToken(t *testing.T) {
	env := kubetest.Cluster(t)
	s := startStack(t, serviceAccountIdentity(t, env, "proxy", configMapRules), nil)

	whoami := func(kc string) string {
		t.Helper()
		out, err := kubectl(t, env, kc, "", "auth", "whoami", "-o", "json")
		if err != nil {
			t.Fatal(err)
		}
		var r authv1.SelfSubjectReview
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("whoami output %q: %v", out, err)
		}
		return r.Status.UserInfo.Username
	}
	if got, want := whoami(s.kubeconfig(t, "")), "system:serviceaccount:"+env.Namespace+":proxy"; got != want {
		t.Errorf("without a token kubectl is %q; want the agent's identity %q", got, want)
	}
	// kubectl sends no token to an http:// server, so a plain HTTP client
	// plays a control plane that forwards a user's Authorization.
	body := `{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}`
	req, _ := http.NewRequest(http.MethodPost, s.server()+"/apis/authentication.k8s.io/v1/selfsubjectreviews", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+adminToken(t, env))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r authv1.SelfSubjectReview
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("selfsubjectreview with the admin token: %d, %v", resp.StatusCode, err)
	}
	if got := r.Status.UserInfo.Username; got != "admin" {
		t.Errorf("with the admin token the API server saw %q; want admin (Authorization passed through verbatim)", got)
	}
	// The ServiceAccount may not list pods: the API server's 403 comes back as is.
	_, err = kubectl(t, env, s.kubeconfig(t, ""), "", "get", "pods", "-n", env.Namespace)
	if err == nil || !strings.Contains(err.Error(), "Forbidden") {
		t.Errorf("kubectl get pods error = %v; want the API server's Forbidden", err)
	}
}

// helm runs through the same front door: discovery, the release Secret
// and the chart's objects all travel as proxy_request.
func TestHelmInstallUpgradeUninstallWorkThroughTheAgent(t *testing.T) {
	env := kubetest.Cluster(t)
	rules := []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"configmaps", "secrets"}, Verbs: []string{"*"}}}
	s := startStack(t, serviceAccountIdentity(t, env, "proxy", rules), nil)
	kc := s.kubeconfig(t, "")
	helm := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		dir := t.TempDir()
		cmd := exec.CommandContext(ctx, filepath.Join(env.Bin, "helm"), append(args, "--kubeconfig", kc, "-n", env.Namespace)...)
		cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+dir, "HELM_CONFIG_HOME="+dir, "HELM_DATA_HOME="+dir)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	helm("install", "demo", "testdata/chart", "--wait", "--timeout", "60s")
	cm, err := env.Client.CoreV1().ConfigMaps(env.Namespace).Get(context.Background(), "demo-greeting", metav1.GetOptions{})
	if err != nil || cm.Data["greeting"] != "hello from helm" {
		t.Fatalf("ConfigMap after helm install = %v, %v", cm.Data, err)
	}
	helm("upgrade", "demo", "testdata/chart", "--set", "greeting=upgraded")
	if out := helm("list", "-o", "json"); !strings.Contains(out, `"revision":"2"`) {
		t.Errorf("helm list = %s; want revision 2", out)
	}
	helm("uninstall", "demo")
	if _, err := env.Client.CoreV1().ConfigMaps(env.Namespace).Get(context.Background(), "demo-greeting", metav1.GetOptions{}); err == nil {
		t.Error("the ConfigMap survived helm uninstall")
	}
}
