package kube

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"os"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Token sources, as reported in Status and logs.
const (
	TokenFromSecret     = "secret"        // non-expiring kubernetes.io/service-account-token Secret (default)
	TokenFromRequest    = "token-request" // TokenRequest API; re-minted before 80% of its lifetime
	TokenFromConfig     = "configured"    // kubernetes.service_token
	renewFraction       = 0.8
	defaultTokenRequest = 24 * time.Hour
)

// creds is what is sent as k8s_service_token and cert data.
type creds struct {
	token    string
	caData   string // base64 of the PEM CA bundle
	source   string
	secret   string // name of the token Secret (TokenFromSecret)
	issued   time.Time
	expires  time.Time // zero: does not expire
	verified bool
}

// renewAt is when a TokenRequest token must be replaced (80% of its life).
func (c creds) renewAt() time.Time {
	if c.expires.IsZero() {
		return time.Time{}
	}
	return c.issued.Add(time.Duration(float64(c.expires.Sub(c.issued)) * renewFraction))
}

var errTokenPending = errors.New("token not populated yet")

// secretToken returns the token of the agent's service-account-token
// Secret, creating one when there is none. The Secret's name is generated:
// a legacy token is a deterministic function of the Secret's name and the
// ServiceAccount, so a Secret re-created under the same name would bring the
// revoked token back. Deleting the Secret is therefore how an operator
// rotates the token. The token controller of kube-controller-manager fills
// the Secret asynchronously; until then secretToken returns errTokenPending.
func secretToken(ctx context.Context, cs kubernetes.Interface, ns string) (name, token string, caPEM []byte, err error) {
	api := cs.CoreV1().Secrets(ns)
	list, err := api.List(ctx, metav1.ListOptions{LabelSelector: tokenLabel + "=" + ServiceAccountName})
	if err != nil {
		return "", "", nil, fmt.Errorf("list token secrets in %s: %w", ns, err)
	}
	var pick *corev1.Secret
	for i := range list.Items {
		s := &list.Items[i]
		if s.Type != corev1.SecretTypeServiceAccountToken || s.Annotations[serviceAccountAnnKey] != ServiceAccountName || s.DeletionTimestamp != nil {
			continue
		}
		// The oldest wins, so every agent instance settles on the same one.
		if pick == nil || s.CreationTimestamp.Before(&pick.CreationTimestamp) ||
			(s.CreationTimestamp.Equal(&pick.CreationTimestamp) && s.Name < pick.Name) {
			pick = s
		}
	}
	if pick == nil {
		labels := managedLabels()
		labels[tokenLabel] = ServiceAccountName
		pick, err = api.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{GenerateName: TokenSecretName + "-", Labels: labels,
				Annotations: map[string]string{serviceAccountAnnKey: ServiceAccountName}},
			Type: corev1.SecretTypeServiceAccountToken,
		}, metav1.CreateOptions{})
		if err != nil {
			return "", "", nil, fmt.Errorf("create token secret in %s: %w", ns, err)
		}
	}
	if len(pick.Data[corev1.ServiceAccountTokenKey]) == 0 {
		return pick.Name, "", nil, errTokenPending
	}
	return pick.Name, string(pick.Data[corev1.ServiceAccountTokenKey]), pick.Data[corev1.ServiceAccountRootCAKey], nil
}

// requestToken mints a bound token for the ServiceAccount with the TokenRequest API.
func requestToken(ctx context.Context, cs kubernetes.Interface, ns string, ttl time.Duration, now time.Time) (creds, error) {
	if ttl <= 0 {
		ttl = defaultTokenRequest
	}
	secs := int64(ttl / time.Second)
	tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, ServiceAccountName,
		&authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{ExpirationSeconds: &secs}}, metav1.CreateOptions{})
	if err != nil {
		return creds{}, fmt.Errorf("request token for %s/%s: %w", ns, ServiceAccountName, err)
	}
	// The server may change the lifetime and says so in the returned spec.
	// Measure it from our clock, so an injected clock drives renewal in tests.
	life := ttl
	if tr.Spec.ExpirationSeconds != nil && *tr.Spec.ExpirationSeconds > 0 {
		life = time.Duration(*tr.Spec.ExpirationSeconds) * time.Second
	}
	return creds{token: tr.Status.Token, source: TokenFromRequest, issued: now, expires: now.Add(life)}, nil
}

// caData returns the base64 PEM CA of the admin kubeconfig, else fallback.
func caData(admin *rest.Config, fallback []byte) (string, error) {
	pem := admin.TLSClientConfig.CAData
	if len(pem) == 0 && admin.TLSClientConfig.CAFile != "" {
		b, err := os.ReadFile(admin.TLSClientConfig.CAFile)
		if err != nil {
			return "", fmt.Errorf("read cluster CA %s: %w", admin.TLSClientConfig.CAFile, err)
		}
		pem = b
	}
	if len(pem) == 0 {
		pem = fallback
	}
	if len(pem) == 0 {
		return "", nil
	}
	return base64.StdEncoding.EncodeToString(pem), nil
}

// saBase is the admin config stripped of every credential: server and CA
// only. The ServiceAccount identity is layered on top of it.
func saBase(admin *rest.Config) *rest.Config {
	return &rest.Config{
		Host:    admin.Host,
		APIPath: admin.APIPath,
		TLSClientConfig: rest.TLSClientConfig{
			Insecure: admin.TLSClientConfig.Insecure, ServerName: admin.TLSClientConfig.ServerName,
			CAFile: admin.TLSClientConfig.CAFile, CAData: admin.TLSClientConfig.CAData,
		},
		Proxy:     admin.Proxy,
		UserAgent: "pipeops-agent",
		QPS:       50,
		Burst:     100,
	}
}

// withToken returns base carrying token as its only credential.
func withToken(base *rest.Config, token string) *rest.Config {
	c := rest.CopyConfig(base)
	c.BearerToken = token
	return c
}

// VerifyToken asks the API server, as the token's owner, whether it may
// create namespaces: what the control plane does with it (protocol.md §14.3).
func VerifyToken(ctx context.Context, base *rest.Config, token string) (bool, string, error) {
	cs, err := kubernetes.NewForConfig(withToken(base, token))
	if err != nil {
		return false, "", err
	}
	r, err := cs.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authzv1.SelfSubjectAccessReview{
		Spec: authzv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authzv1.ResourceAttributes{Verb: "create", Resource: "namespaces"}},
	}, metav1.CreateOptions{})
	if err != nil {
		if apierrors.IsUnauthorized(err) {
			return false, "token rejected by the API server (401)", nil
		}
		return false, "", fmt.Errorf("selfsubjectaccessreview: %w", err)
	}
	if !r.Status.Allowed {
		reason := r.Status.Reason
		if reason == "" {
			reason = "not allowed to create namespaces"
		}
		return false, reason, nil
	}
	return true, "", nil
}

// tokenTransport sets the current ServiceAccount token on every request, so
// clients built once keep working after the token is re-minted.
type tokenTransport struct {
	token func() string
	next  http.RoundTripper
}

func (t *tokenTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	r := req.Clone(req.Context())
	r.Header.Set("Authorization", "Bearer "+t.token())
	return t.next.RoundTrip(r)
}
