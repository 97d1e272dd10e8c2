package attack

import (
	"context"
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pipeops/pipeops-vm-agent/internal/devplane"
	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

// The attacker sits between the agent and PipeOps and holds the real
// server's certificate (it is public) but not its key. It presents its own
// certificate and appends the pinned one. The agent must refuse the
// handshake, so the install token in the Authorization header never reaches
// the attacker. Each test runs in both trust modes (identPKIs).

func alwaysForged(pki identPKI) func(*tls.ClientHelloInfo) (tls.Certificate, bool) {
	return func(*tls.ClientHelloInfo) (tls.Certificate, bool) { return pki.forged, true }
}

// identExpectRefused waits until the agent reached the forged server and
// either leaked a request or recorded the pin refusal in linkErr, then
// fails on any leak.
func identExpectRefused(t *testing.T, trap *identTrap, a *identAgent, lastErr func() string) {
	t.Helper()
	testbin.Eventually(t, 90*time.Second, "the agent to meet the forged certificate", func() bool {
		hellos, reqs := trap.seen()
		return hellos > 0 && (len(reqs) > 0 || strings.Contains(lastErr(), "pin_sha256"))
	}, a.logs, lastErr)
	if _, reqs := trap.seen(); len(reqs) > 0 {
		t.Fatalf("the attacker's server passed the pin and received %q", reqs)
	}
	if e := lastErr(); !strings.Contains(e, "no pin matches") {
		t.Errorf("last error = %q; want the pin refusal explained", e)
	}
}

func TestAnAppendedPinnedCertificateDoesNotPassThePinOnTheController(t *testing.T) {
	for _, pki := range identPKIs(t) {
		t.Run(pki.mode, func(t *testing.T) {
			env := kubetest.Cluster(t)
			trap := identStartTrap(t, nil, alwaysForged(pki))
			a := identStartAgent(t, env, trap.url(), "  tls:\n"+pki.tls, "")
			identExpectRefused(t, trap, a, func() string { return a.status().Link.LastError })
		})
	}
}

func TestAnAppendedPinnedCertificateDoesNotPassThePinOnTheGateway(t *testing.T) {
	for _, pki := range identPKIs(t) {
		t.Run(pki.mode, func(t *testing.T) {
			env := kubetest.Cluster(t)
			// The genuine controller hands out a gateway the attacker serves.
			trap := identStartTrap(t, nil, alwaysForged(pki))
			dp, ts := identPlane(t, pki.real, trap.url())
			a := identStartAgent(t, env, ts.URL, "  tls:\n"+pki.tls, "")
			identRegistered(t, dp, a)
			identExpectRefused(t, trap, a, func() string { return a.status().Link.LastError })
		})
	}
}

func TestAnAppendedPinnedCertificateDoesNotPassThePinOnTheRouteCalls(t *testing.T) {
	// A private cluster: the route sync starts once an ingress controller
	// Service is found at pipeops-system/traefik, which other test packages
	// sharing a cluster must not see.
	p := kubetest.PrivateCluster(t, true)
	ctx := context.Background()
	if _, err := p.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "pipeops-system"}},
		metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	if _, err := p.Client.CoreV1().Services("pipeops-system").Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "traefik"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "web", Port: 80}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, pki := range identPKIs(t) {
		t.Run(pki.mode, func(t *testing.T) {
			// The attacker intercepts only the REST calls (told apart by
			// their HTTP/2 offer) and lets the WebSocket through to PipeOps,
			// so the agent registers and then syncs its routes.
			dp := devplane.New(devplane.Config{Tokens: []string{identToken}})
			t.Cleanup(dp.CloseAll)
			trap := identStartTrap(t, dp.Handler(), func(h *tls.ClientHelloInfo) (tls.Certificate, bool) {
				if slices.Contains(h.SupportedProtos, "h2") {
					return pki.forged, true
				}
				return pki.real, false
			})
			a := identStartAgent(t, p.Env, trap.url(), "  tls:\n"+pki.tls, "")
			id := identRegistered(t, dp, a)
			identExpectRefused(t, trap, a, func() string { return a.status().Routes.LastError })
			if _, synced := dp.RouteCluster(id); synced {
				t.Errorf("a route sync reached PipeOps although every REST call went to the attacker")
			}
		})
	}
}

func TestAControlPlaneHandingOutAPlainTextGatewayDoesNotGetTheToken(t *testing.T) {
	env := kubetest.Cluster(t)
	pki := identPKIs(t)[0]
	var (
		mu     sync.Mutex
		leaked []string
	)
	seen := func() []string { mu.Lock(); defer mu.Unlock(); return slices.Clone(leaked) }
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		leaked = append(leaked, r.URL.Path+" auth="+r.Header.Get("Authorization"))
		mu.Unlock()
		http.Error(w, "no", http.StatusBadGateway)
	}))
	t.Cleanup(plain.Close)
	// register_success carries gateway_ws_url ws://… although the agent
	// reached the controller over https.
	dp, ts := identPlane(t, pki.real, plain.URL)
	a := identStartAgent(t, env, ts.URL, "  tls:\n"+pki.tls, "")
	identRegistered(t, dp, a)
	testbin.Eventually(t, 60*time.Second, "the downgrade refused", func() bool {
		return strings.Contains(a.status().Link.LastError, "downgrade") || len(seen()) > 0
	}, a.logs)
	if got := seen(); len(got) > 0 {
		t.Fatalf("the plain-text gateway received %q", got)
	}
	if e := a.status().Link.LastError; !strings.Contains(e, "gateway_ws_url") || !strings.Contains(e, "pipeops.api_url") {
		t.Errorf("last error = %q; want it to name gateway_ws_url and pipeops.api_url", e)
	}
}
