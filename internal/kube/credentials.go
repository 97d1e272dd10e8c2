package kube

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/kubernetes"

	"github.com/pipeops/pipeops-vm-agent/internal/logging"
)

// Credentials are the token and base64 PEM CA to send as k8s_service_token
// and cert data at registration. It blocks until the first token is minted
// or ctx ends. The values change only when the token is really replaced
// (Secret deleted, TokenRequest renewal, configuration); CredentialsChanged
// says when.
func (m *Manager) Credentials(ctx context.Context) (token, caData string, err error) {
	select {
	case <-m.ready:
	case <-ctx.Done():
		return "", "", fmt.Errorf("waiting for the Kubernetes ServiceAccount token: %w (%s)", ctx.Err(), m.reason())
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cred.token, m.cred.caData, nil
}

// CredentialsChanged returns a channel closed at the next change of the
// credentials; the control-plane link then registers again (protocol.md §14.3).
func (m *Manager) CredentialsChanged() <-chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	ch := make(chan struct{})
	m.credWaiters = append(m.credWaiters, ch)
	return ch
}

// TokenInfo describes the current token without revealing it.
type TokenInfo struct {
	Source   string    // TokenFromSecret, TokenFromRequest or TokenFromConfig
	Expires  time.Time // zero: does not expire
	RenewAt  time.Time // zero: never renewed on a timer
	Verified bool      // passed the create-namespaces SelfSubjectAccessReview
	Secret   string    // name of the token Secret in the agent's namespace (TokenFromSecret)
}

// TokenInfo reports where the current token came from and when it is renewed.
func (m *Manager) TokenInfo() TokenInfo {
	m.mu.Lock()
	defer m.mu.Unlock()
	return TokenInfo{Source: m.cred.source, Expires: m.cred.expires, RenewAt: m.cred.renewAt(), Verified: m.cred.verified, Secret: m.cred.secret}
}

// ensureCredentials keeps the token current. Order (protocol.md §14.3): a
// configured token that passes the check; else the minted token; a token
// that fails the check is used only as a last resort, with a warning.
func (m *Manager) ensureCredentials(ctx context.Context) error {
	m.mu.Lock()
	cur, cs, admin := m.cred, m.adminCS, m.admin
	m.mu.Unlock()

	ca, err := m.configuredCA()
	if err != nil {
		return err
	}
	configured := m.cfg.ServiceToken.Reveal()
	m.mu.Lock()
	provisional := m.provisional
	m.mu.Unlock()
	if provisional {
		want := ca
		if want == "" {
			if want, err = caData(admin, nil); err != nil {
				return err
			}
		}
		kept, err := m.checkSaved(ctx, cur, configured, want)
		if err != nil || kept {
			return err
		}
		cur = creds{} // rejected: nothing of it is reused
	}
	if configured != "" {
		if cur.source == TokenFromConfig && cur.verified {
			return nil
		}
		ok, why, err := m.verify(ctx, configured)
		if err != nil {
			return err
		}
		if ok {
			if ca == "" {
				if ca, err = caData(admin, nil); err != nil {
					return err
				}
			}
			m.setCreds(creds{token: configured, caData: ca, source: TokenFromConfig, issued: m.now(), verified: true})
			return nil
		}
		m.log.Warn("configured kubernetes.service_token failed the check; minting the agent's own token instead", logging.KeyReason, why)
	}

	next, caPEM, err := m.mint(ctx, cs, cur)
	if err != nil {
		m.mu.Lock()
		m.reconciled = time.Time{} // the ServiceAccount may be gone: bootstrap again next round
		m.mu.Unlock()
		return err
	}
	if ca == "" {
		if ca, err = caData(admin, caPEM); err != nil {
			return err
		}
	}
	next.caData = ca
	if next.token == cur.token && cur.verified {
		next.verified = true
	} else {
		ok, why, err := m.verify(ctx, next.token)
		if err != nil {
			return err
		}
		next.verified = ok
		if !ok {
			if configured != "" {
				m.log.Warn("neither the configured nor the minted token may create namespaces; sending the configured one as a last resort", logging.KeyReason, why)
				next = creds{token: configured, caData: ca, source: TokenFromConfig, issued: m.now()}
			} else {
				m.log.Warn("the minted ServiceAccount token may not create namespaces; sending it anyway as a last resort", logging.KeyReason, why)
			}
		}
	}
	m.setCreds(next)
	return nil
}

// configuredCA is kubernetes.ca_cert_data as base64 PEM ("" when unset).
func (m *Manager) configuredCA() (string, error) {
	v := strings.TrimSpace(m.cfg.CACertData)
	if v == "" {
		return "", nil
	}
	if strings.HasPrefix(v, "-----BEGIN") {
		return base64.StdEncoding.EncodeToString([]byte(v + "\n")), nil
	}
	if _, err := base64.StdEncoding.DecodeString(v); err != nil {
		return "", fmt.Errorf("kubernetes.ca_cert_data is neither PEM nor base64 PEM: %w", err)
	}
	return v, nil
}

// verify runs the SelfSubjectAccessReview, retrying briefly: a fresh
// ClusterRoleBinding takes a moment to reach the API server's authorizer.
func (m *Manager) verify(ctx context.Context, token string) (bool, string, error) {
	m.mu.Lock()
	base := m.base
	m.mu.Unlock()
	var why string
	for i := 0; i < 10; i++ {
		vctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		ok, reason, err := VerifyToken(vctx, base, token)
		cancel()
		if err != nil || ok {
			return ok, reason, err
		}
		why = reason
		if !sleep(ctx, 300*time.Millisecond) {
			break
		}
	}
	return false, why, nil
}

// mint returns the agent's own token: from the service-account-token Secret
// while the token controller fills it, else from the TokenRequest API.
func (m *Manager) mint(ctx context.Context, cs kubernetes.Interface, cur creds) (creds, []byte, error) {
	ns := m.names.Namespace
	m.mu.Lock()
	mode := m.tokenMode
	m.mu.Unlock()
	if mode == TokenFromSecret {
		deadline := time.Now().Add(m.tokenWait)
		for {
			name, tok, caPEM, err := secretToken(ctx, cs, ns)
			if err == nil {
				m.rememberMode(TokenFromSecret)
				if cur.source == TokenFromSecret && tok == cur.token {
					return cur, caPEM, nil
				}
				return creds{token: tok, source: TokenFromSecret, secret: name, issued: m.now()}, caPEM, nil
			}
			if !errors.Is(err, errTokenPending) {
				return creds{}, nil, err
			}
			if time.Now().After(deadline) || !sleep(ctx, 250*time.Millisecond) {
				break
			}
		}
		if ctx.Err() != nil {
			return creds{}, nil, ctx.Err()
		}
		m.log.Warn("no token controller filled the ServiceAccount token Secret; using TokenRequest tokens renewed before 80% of their lifetime",
			"secret", ns+"/"+TokenSecretName+"-*", "wait", m.tokenWait.String(), "ttl", m.tokenTTL().String())
		m.rememberMode(TokenFromRequest)
	}
	if cur.source == TokenFromRequest && m.now().Before(cur.renewAt()) {
		return cur, nil, nil
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := requestToken(rctx, cs, ns, m.tokenTTL(), m.now())
	if err == nil {
		m.log.Info("minted a ServiceAccount token", "expires", c.expires, "renew_at", c.renewAt())
	}
	return c, nil, err
}

// tokenTTL is the lifetime asked for TokenRequest tokens (kubernetes.token_ttl, default 24 h).
func (m *Manager) tokenTTL() time.Duration {
	if d := time.Duration(m.cfg.TokenTTL); d > 0 {
		return d
	}
	return defaultTokenRequest
}

// setCreds stores c and wakes waiters when the token or CA changed.
func (m *Manager) setCreds(c creds) {
	m.mu.Lock()
	changed := c.token != m.cred.token || c.caData != m.cred.caData
	first := m.cred.token == ""
	m.cred = c
	m.clientsetReadyLocked()
	var waiters []chan struct{}
	if changed {
		waiters, m.credWaiters = m.credWaiters, nil
	}
	m.mu.Unlock()
	// Saved before anyone hears of them, so whoever reads the state after
	// the announcement (a restart, HA's identity) sees these credentials.
	// Unchanged ones are saved too (e.g. the saved token was verified).
	m.save()
	if c.expires.IsZero() {
		m.metrics.tokenExpiry.Set(0)
	} else {
		m.metrics.tokenExpiry.Set(float64(c.expires.Unix()))
	}
	if !changed {
		return
	}
	for _, ch := range waiters {
		close(ch)
	}
	m.readyOnce.Do(func() { close(m.ready) })
	if !first {
		m.log.Info("kubernetes credentials changed; the control-plane link registers again", logging.KeySource, c.source, logging.KeyState, "rotated")
	}
}

// metrics are the pipeops_agent_kubernetes_* series.
type metrics struct {
	up            prometheus.Gauge
	probeFailures prometheus.Counter
	tokenExpiry   prometheus.Gauge
	reconciled    prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		up: prometheus.NewGauge(prometheus.GaugeOpts{Name: "pipeops_agent_kubernetes_up",
			Help: "1 when the last probe of the Kubernetes API server (/readyz) succeeded."}),
		probeFailures: prometheus.NewCounter(prometheus.CounterOpts{Name: "pipeops_agent_kubernetes_probe_failures_total",
			Help: "Failed probes of the Kubernetes API server."}),
		tokenExpiry: prometheus.NewGauge(prometheus.GaugeOpts{Name: "pipeops_agent_kubernetes_token_expiry_timestamp_seconds",
			Help: "When the ServiceAccount token sent to the control plane expires; 0 for a non-expiring token."}),
		reconciled: prometheus.NewCounter(prometheus.CounterOpts{Name: "pipeops_agent_kubernetes_rbac_changes_total",
			Help: "Objects of the agent's ServiceAccount and RBAC created or repaired."}),
	}
	if reg != nil {
		reg.MustRegister(m.up, m.probeFailures, m.tokenExpiry, m.reconciled)
	}
	return m
}

// rememberMode records the token controller's outcome for later starts.
func (m *Manager) rememberMode(mode string) {
	m.mu.Lock()
	m.tokenMode = mode
	m.mu.Unlock()
	m.save()
}
