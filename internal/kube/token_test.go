package kube_test

import (
	"context"
	"encoding/base64"
	"strings"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/pipeops/pipeops-vm-agent/internal/config"
	"github.com/pipeops/pipeops-vm-agent/internal/health"
	"github.com/pipeops/pipeops-vm-agent/internal/kube"
	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
)

// tokenClient is a clientset that carries only token.
func tokenClient(t *testing.T, env *kubetest.Env, token string) kubernetes.Interface {
	t.Helper()
	cs, err := kubernetes.NewForConfig(&rest.Config{Host: env.Config.Host,
		TLSClientConfig: rest.TLSClientConfig{CAData: env.Config.CAData}, BearerToken: token})
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

func closedWithin(ch <-chan struct{}, d time.Duration) bool {
	select {
	case <-ch:
		return true
	case <-time.After(d):
		return false
	}
}

func TestTheTokenSecretIsStableAcrossRestartsAndReplacedWhenDeleted(t *testing.T) {
	t.Parallel()
	env := kubetest.RequireFull(t) // the token controller of kube-controller-manager fills the Secret
	n := testNames(t, env, false)
	tr := health.New(nil)
	kcfg := config.Kubernetes{Namespace: n.Namespace}
	m := startManager(t, env, kcfg, kube.WithNames(n), kube.WithHealth(tr))
	tok, ca := credentials(t, m)

	info := m.TokenInfo()
	if info.Source != kube.TokenFromSecret || !info.Expires.IsZero() || !info.RenewAt.IsZero() || !info.Verified {
		t.Fatalf("TokenInfo = %+v; want a verified, non-expiring Secret token", info)
	}
	if pem, err := base64.StdEncoding.DecodeString(ca); err != nil || !strings.Contains(string(pem), "BEGIN CERTIFICATE") {
		t.Fatalf("CA data is not base64 PEM: %q, %v", ca, err)
	}
	// The proxy identity is the ServiceAccount, never the admin.
	pc := m.ProxyConfig()
	if pc == nil || pc.BearerToken != tok || pc.BearerToken == env.Config.BearerToken || len(pc.CertData) > 0 || pc.Impersonate.UserName != "" {
		t.Fatalf("ProxyConfig is not the ServiceAccount identity: %+v", pc)
	}
	if _, err := tokenClient(t, env, tok).CoreV1().Pods(env.Namespace).List(context.Background(), metav1.ListOptions{}); err != nil {
		t.Fatalf("the minted token cannot list pods: %v", err)
	}
	eventually(t, 10*time.Second, "condition kubernetes OK", func() bool { return condition(tr, health.Kubernetes).OK })

	// A restarted agent finds the same Secret and sends the same token, so
	// it resumes without registering again.
	m2 := startManager(t, env, kcfg, kube.WithNames(n))
	if tok2, _ := credentials(t, m2); tok2 != tok {
		t.Fatal("a second manager minted a different token; the Secret must be reused")
	}

	// Revocation: deleting the Secret invalidates the token; the agent mints
	// a new one and says so (the control-plane link then registers again).
	changed := m.CredentialsChanged()
	if err := env.Client.CoreV1().Secrets(n.Namespace).Delete(context.Background(), info.Secret, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if !closedWithin(changed, 60*time.Second) {
		t.Fatal("CredentialsChanged did not fire after the token Secret was deleted")
	}
	newTok, _ := credentials(t, m)
	if newTok == tok || newTok == "" || m.TokenInfo().Secret == info.Secret {
		t.Fatal("the token did not change after the Secret was deleted")
	}
	if !m.TokenInfo().Verified {
		t.Fatal("the new token was not verified")
	}
	eventually(t, 30*time.Second, "the old token to be rejected", func() bool {
		_, err := tokenClient(t, env, tok).CoreV1().Pods(env.Namespace).List(context.Background(), metav1.ListOptions{})
		return apierrors.IsUnauthorized(err)
	})
}

func TestTokenRequestFallbackRenewsBeforeEightyPercentOfItsLifetime(t *testing.T) {
	t.Parallel()
	// No kube-controller-manager: nothing fills the token Secret, so the
	// manager falls back to TokenRequest tokens. The clock is injected.
	p := kubetest.PrivateCluster(t, false)
	clock := newFakeClock()
	kcfg := config.Kubernetes{Namespace: "pipeops-system", TokenTTL: config.D(time.Hour)}
	m := startManager(t, p.Env, kcfg, kube.WithClock(clock.Now), kube.WithIntervals(100*time.Millisecond, 100*time.Millisecond, 300*time.Millisecond))
	tok1, _ := credentials(t, m)
	start := clock.Now()
	info := m.TokenInfo()
	if info.Source != kube.TokenFromRequest || !info.Verified {
		t.Fatalf("TokenInfo = %+v; want a verified TokenRequest token", info)
	}
	if want := start.Add(time.Hour); !info.Expires.Equal(want) {
		t.Fatalf("expires %v, want %v", info.Expires, want)
	}
	if want := start.Add(48 * time.Minute); !info.RenewAt.Equal(want) {
		t.Fatalf("renew at %v, want %v (80%% of one hour)", info.RenewAt, want)
	}

	changed := m.CredentialsChanged()
	clock.Add(47 * time.Minute)
	if closedWithin(changed, time.Second) { // ten probe rounds
		t.Fatal("the token was renewed before 80% of its lifetime")
	}
	clock.Add(2 * time.Minute)
	if !closedWithin(changed, 30*time.Second) {
		t.Fatal("the token was not renewed after 80% of its lifetime")
	}
	tok2, _ := credentials(t, m)
	if tok2 == tok1 {
		t.Fatal("renewal kept the same token")
	}
	if got, want := m.TokenInfo().Expires, start.Add(49*time.Minute+time.Hour); !got.Equal(want) {
		t.Fatalf("renewed token expires %v, want %v", got, want)
	}
	if ok, why, err := kube.VerifyToken(context.Background(), &rest.Config{Host: p.Config.Host,
		TLSClientConfig: rest.TLSClientConfig{CAData: p.Config.CAData}}, tok2); err != nil || !ok {
		t.Fatalf("renewed token fails the create-namespaces check: %v %s", err, why)
	}
}

func TestAConfiguredTokenIsUsedOnlyWhenItPassesTheCheck(t *testing.T) {
	t.Parallel()
	env := kubetest.RequireFull(t)
	n := testNames(t, env, false)
	ctx := context.Background()
	if _, err := kube.Bootstrap(ctx, env.Client, n); err != nil {
		t.Fatal(err)
	}
	tr, err := env.Client.CoreV1().ServiceAccounts(n.Namespace).CreateToken(ctx, kube.ServiceAccountName, &authnv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	good := tr.Status.Token
	tests := []struct {
		name       string
		configured string
		wantSource string
		wantToken  string
	}{
		{"a configured token that may create namespaces wins", good, kube.TokenFromConfig, good},
		{"a configured token that fails the check gives way to the minted one", "not-a-token", kube.TokenFromSecret, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kcfg := config.Kubernetes{Namespace: n.Namespace, ServiceToken: config.Secret(tt.configured), CACertData: "-----BEGIN CERTIFICATE-----\nX\n-----END CERTIFICATE-----"}
			m := startManager(t, env, kcfg, kube.WithNames(n))
			tok, ca := credentials(t, m)
			info := m.TokenInfo()
			if info.Source != tt.wantSource || !info.Verified {
				t.Fatalf("TokenInfo = %+v; want verified %s", info, tt.wantSource)
			}
			if tt.wantToken != "" && tok != tt.wantToken {
				t.Fatal("the configured token was not the one sent")
			}
			if tok == "not-a-token" {
				t.Fatal("a token that failed the check was sent although a good one existed")
			}
			if pem, _ := base64.StdEncoding.DecodeString(ca); !strings.HasPrefix(string(pem), "-----BEGIN CERTIFICATE-----\nX\n") {
				t.Fatalf("configured CA not used: %q", pem)
			}
		})
	}
}
