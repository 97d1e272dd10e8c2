package kubeproxy

import (
	"context"
	"strings"
	"testing"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
)

// TestAnExecTheServiceAccountMayNotDoNamesTheMissingPermission dials a real
// kube-apiserver as a ServiceAccount without pods/exec: the handshake is
// refused with 403, and proxy_error says which verb and resource to grant
// (the reference's exec 403s were hard to diagnose, §6.3 rule 5).
func TestAnExecTheServiceAccountMayNotDoNamesTheMissingPermission(t *testing.T) {
	env := kubetest.Cluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "no-exec"}}
	if _, err := env.Client.CoreV1().ServiceAccounts(env.Namespace).Create(ctx, sa, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tr, err := env.Client.CoreV1().ServiceAccounts(env.Namespace).CreateToken(ctx, "no-exec", &authv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	identity := rest.AnonymousClientConfig(env.Config)
	identity.BearerToken = tr.Status.Token

	p := newTestProxy(t, identity, nil)
	c := newFakeConn(t)
	send(t, p, c, protocol.TypeWSStart, "", protocol.WebSocketStart{StreamID: "x1", Method: "GET",
		Path: "/api/v1/namespaces/" + env.Namespace + "/pods/web-0/exec", Query: "command=sh&stdin=true&stdout=true&tty=true"})
	env1 := c.next(t)
	var e protocol.ErrorPayload
	mustDecode(t, env1, &e)
	if env1.Type != protocol.TypeProxyError || e.RequestID != "x1" {
		t.Fatalf("got %s %s; want proxy_error for x1", env1.Type, env1.Payload)
	}
	// A WebSocket exec is a GET, so the API server asks for verb get.
	for _, want := range []string{"forbidden (403)", `get "pods/exec"`, `grant verb "get" on resource "pods/exec"`, "system:serviceaccount:" + env.Namespace + ":no-exec", "ClusterRole", "bound in namespace \"" + env.Namespace + "\"", "kubernetes.protected_namespaces"} {
		if !strings.Contains(e.Error, want) {
			t.Errorf("proxy_error %q; want it to contain %q", e.Error, want)
		}
	}
	if env2 := c.next(t); env2.Type != protocol.TypeProxyWebSocketClose {
		t.Errorf("got %s; want proxy_websocket_close after the error", env2.Type)
	}
}
