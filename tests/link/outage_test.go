package link

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pipeops/pipeops-vm-agent/internal/devplane"
	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

// get fetches url and returns the status code and body ("" and 0 on error).
func get(url string) (int, string) {
	resp, err := insecureClient.Get(url)
	if err != nil {
		return 0, ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// restartResumes stops the agent, starts it again and waits until it
// heartbeats on the gateway once more; it fails if it registered again.
func restartResumes(t *testing.T, a *agentProc, dp *devplaneProc, within time.Duration) {
	t.Helper()
	a.stop()
	before := dp.only().Heartbeats
	a.start()
	start := time.Now()
	testbin.Eventually(t, within, "back on the gateway after the restart", heartbeatingOnGateway(dp, before+1))
	t.Logf("back on the gateway %s after the restart", time.Since(start).Round(time.Millisecond))
	if c := dp.only(); c.Registrations != 1 {
		t.Fatalf("the restart registered again: %d registrations; want 1 (resume on the gateway, §8.3)", c.Registrations)
	}
}

func TestARestartResumesWithoutRegisteringInEveryCredentialMode(t *testing.T) {
	t.Run("no token controller (TokenRequest)", func(t *testing.T) {
		p := kubetest.PrivateCluster(t, false) // no kube-controller-manager: nothing fills token Secrets
		dp := startDevplane(t)
		a := newAgent(t, dp.url(), p.Kubeconfig, "")
		a.start()
		testbin.Eventually(t, 90*time.Second, "registered (after waiting once for a token controller)", heartbeatingOnGateway(dp, 1))
		restartResumes(t, a, dp, 10*time.Second)
		restartResumes(t, a, dp, 10*time.Second)
		if n := strings.Count(a.out.String(), "no token controller filled"); n != 1 {
			t.Fatalf("the agent waited for a token controller %d times over three starts; want once, remembered", n)
		}
	})
	t.Run("token controller (Secret)", func(t *testing.T) {
		env := kubetest.RequireFull(t)
		dp := startDevplane(t)
		a := newAgent(t, dp.url(), env.Kubeconfig, "")
		a.start()
		testbin.Eventually(t, 60*time.Second, "registered", heartbeatingOnGateway(dp, 1))
		restartResumes(t, a, dp, 10*time.Second)
	})
	t.Run("configured token", func(t *testing.T) {
		env := kubetest.Cluster(t)
		tok := clusterAdminToken(t, env)
		dp := startDevplane(t)
		a := newAgent(t, dp.url(), env.Kubeconfig, "")
		testbin.WriteAgentConfig(t, a.dir, testbin.AgentConfig{Name: "e2e-link", Port: a.port, APIURL: dp.url(), Kubeconfig: env.Kubeconfig,
			Kubernetes: "  service_token: " + tok + "\n"})
		a.start()
		testbin.Eventually(t, 60*time.Second, "registered", heartbeatingOnGateway(dp, 1))
		restartResumes(t, a, dp, 10*time.Second)
	})
}

// clusterAdminToken mints a token for a ServiceAccount of the test's
// namespace that may create namespaces (what a configured token needs).
func clusterAdminToken(t *testing.T, env *kubetest.Env) string {
	t.Helper()
	ctx := context.Background()
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "configured"}}
	if _, err := env.Client.CoreV1().ServiceAccounts(env.Namespace).Create(ctx, sa, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	crb := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "configured-" + env.Namespace},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "cluster-admin"},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: "configured", Namespace: env.Namespace}}}
	if _, err := env.Client.RbacV1().ClusterRoleBindings().Create(ctx, crb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = env.Client.RbacV1().ClusterRoleBindings().Delete(context.Background(), crb.Name, metav1.DeleteOptions{})
	})
	secs := int64(3600)
	tr, err := env.Client.CoreV1().ServiceAccounts(env.Namespace).CreateToken(ctx, "configured",
		&authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{ExpirationSeconds: &secs}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tr.Status.Token
}

func TestKubernetesDownDoesNotCutTheControlPlaneOff(t *testing.T) {
	p := kubetest.PrivateCluster(t, false)
	dp := startDevplane(t)
	a := newAgent(t, dp.url(), p.Kubeconfig, "")
	a.start()
	testbin.Eventually(t, 90*time.Second, "registered", heartbeatingOnGateway(dp, 1))
	id := dp.only().ID
	a.stop()

	// The API server is down when the agent starts (an etcd or certificate
	// outage): it resumes on its cached gateway with its saved identity
	// and credentials, and says Kubernetes is unreachable.
	p.StopAPIServer(t)
	before := dp.only().Heartbeats
	a.start()
	testbin.Eventually(t, 20*time.Second, "resumed on the gateway with the API server down", heartbeatingOnGateway(dp, before+1))
	testbin.Eventually(t, 10*time.Second, "a heartbeat saying the agent is not healthy", func() bool {
		hb := dp.only().Heartbeat()
		return hb.Status == "reconnecting" && hb.TunnelStatus == "connected"
	})
	if c := dp.only(); c.Registrations != 1 {
		t.Fatalf("registrations = %d; want 1", c.Registrations)
	}
	ready := fmt.Sprintf("http://127.0.0.1:%d/ready", a.port)
	testbin.Eventually(t, 10*time.Second, "/ready 503 naming the API server", func() bool {
		code, body := get(ready)
		return code == http.StatusServiceUnavailable && strings.Contains(body, "API server unreachable")
	})
	st, err := a.status()
	if err != nil || st.Ready || st.Kubernetes.Reachable || !strings.Contains(st.Kubernetes.LastError, "API server unreachable") ||
		st.Link.State != "connected" {
		t.Fatalf("pipeopsctl status = %+v, %v; want connected, not ready, Kubernetes unreachable", st, err)
	}
	if code, body := get(fmt.Sprintf("http://127.0.0.1:%d/api/status", a.port)); code != 200 || !strings.Contains(body, "API server unreachable") {
		t.Fatalf("dashboard status = %d %s; want it to show the API server unreachable", code, body)
	}
	// A proxied call is answered at once, with the reason.
	front := dp.url() + devplane.FrontDoorPrefix + id + "/k8s/api/v1/namespaces"
	start := time.Now()
	code, body := get(front)
	if code != http.StatusBadGateway || !strings.Contains(body, "API server unreachable") {
		t.Fatalf("proxied call = %d %q; want 502 with \"API server unreachable\"", code, body)
	}
	t.Logf("proxied call answered in %s: %s", time.Since(start).Round(time.Millisecond), strings.TrimSpace(body))

	// It recovers by itself when the API server returns.
	p.StartAPIServer(t)
	testbin.Eventually(t, 30*time.Second, "healthy heartbeats", func() bool { return dp.only().Heartbeat().Status == "healthy" })
	testbin.Eventually(t, 10*time.Second, "/ready 200", func() bool { code, _ := get(ready); return code == 200 })
	testbin.Eventually(t, 10*time.Second, "proxied calls work again", func() bool { code, _ := get(front); return code == 200 })
	if c := dp.only(); c.Registrations != 1 {
		t.Fatalf("registrations after recovery = %d; want 1 (the saved token was still good)", c.Registrations)
	}
}
