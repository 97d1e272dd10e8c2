package attack

import (
	"encoding/json"
	"net"
	"net/http"
	"sync"
	"testing"

	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
)

func TestTheControlPlanesCredentialsNeverReachAServiceBackend(t *testing.T) {
	env := kubetest.Cluster(t)
	var mu sync.Mutex
	var seen http.Header
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = r.Header.Clone()
		mu.Unlock()
		_, _ = w.Write([]byte(secret))
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	port := ln.Addr().(*net.TCPAddr).Port
	createService(t, env, externalName("app", "localhost"))
	r := startAgent(t, env, allowLoopback)
	r.waitResolved(env.Namespace, "app", port)

	req := serviceGET(env.Namespace, "app", port, "/")
	req.Headers = protocol.Headers{"Authorization": {"Bearer the-control-planes-cluster-credential"}, "Impersonate-User": {"system:admin"}}
	if a := r.proxy(req); a.Body != secret {
		t.Fatalf("got %s; want the backend's answer", a)
	}
	mu.Lock()
	defer mu.Unlock()
	if got := seen.Get("Authorization"); got != "" {
		t.Errorf("the Service backend received the control plane's Authorization %q", got)
	}
	if got := seen.Get("Impersonate-User"); got != "" {
		t.Errorf("the Service backend received Impersonate-User %q", got)
	}
}

func TestTheControlPlaneCannotImpersonateAnotherIdentity(t *testing.T) {
	env := kubetest.Cluster(t)
	r := startAgent(t, env, "")
	// Whoever the API server thinks is asking.
	review := protocol.ProxyRequest{Method: http.MethodPost, Path: "/apis/authentication.k8s.io/v1/selfsubjectreviews",
		Headers: protocol.Headers{"Content-Type": {"application/json"}, "Impersonate-User": {"system:admin"}, "Impersonate-Group": {"system:masters"}},
		Body:    protocol.Body(`{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}`)}
	a := r.proxy(review)
	var out struct {
		Status struct {
			UserInfo struct {
				Username string   `json:"username"`
				Groups   []string `json:"groups"`
			} `json:"userInfo"`
		} `json:"status"`
	}
	_ = json.Unmarshal([]byte(a.Body), &out)
	const agent = "system:serviceaccount:pipeops-system:pipeops-agent"
	if a.Status != http.StatusCreated || out.Status.UserInfo.Username != agent {
		t.Fatalf("the API server answered %s; want 201 for %s (Impersonate-* dropped), not the impersonated system:admin or a 403 for trying", a, agent)
	}
}
