package kube

import (
	"context"
	"errors"
	"time"

	"k8s.io/client-go/rest"

	"github.com/pipeops/pipeops-vm-agent/internal/logging"
)

// Saved is what the agent remembers about its Kubernetes identity across
// restarts, so a restart resumes with the same token instead of minting a
// new one (and registering again), and does not wait for a token
// controller it already knows the cluster lacks.
type Saved struct {
	Server  string // API server URL the token belongs to
	Token   string
	CAData  string // base64 PEM
	Source  string // TokenFromSecret, TokenFromRequest or TokenFromConfig
	Secret  string // name of the token Secret (TokenFromSecret)
	Issued  time.Time
	Expires time.Time // zero: does not expire
	// TokenMode is the remembered outcome of waiting for a token
	// controller: TokenFromSecret (it fills Secrets) or TokenFromRequest
	// (it does not); "" when not known yet.
	TokenMode string
}

// CredentialStore persists Saved; the daemon implements it over the state file.
type CredentialStore interface {
	LoadCredentials() Saved
	SaveCredentials(Saved) error
}

// WithStore makes the manager start from the saved credentials and keep
// them saved. The saved token is used at once (the control-plane link can
// resume while the API server is down) and checked once, with a single
// SelfSubjectAccessReview, as soon as the API server answers.
func WithStore(s CredentialStore) Option { return func(m *Manager) { m.store = s } }

// loadSaved adopts the saved credentials as provisional ones (local state
// only; no I/O beyond the store's memory copy).
func (m *Manager) loadSaved() {
	if m.store == nil {
		return
	}
	s := m.store.LoadCredentials()
	m.savedServer = s.Server
	if s.TokenMode == TokenFromSecret || s.TokenMode == TokenFromRequest {
		m.tokenMode = s.TokenMode
	}
	if s.Token == "" || (!s.Expires.IsZero() && !m.now().Before(s.Expires)) {
		return // nothing saved, or a TokenRequest token that has expired
	}
	m.lastSaved = s
	m.cred = creds{token: s.Token, caData: s.CAData, source: s.Source, secret: s.Secret, issued: s.Issued, expires: s.Expires}
	m.provisional = true
	m.readyOnce.Do(func() { close(m.ready) })
}

// forgetOtherCluster drops what was remembered about another API server
// (the kubeconfig now points elsewhere): its token-controller outcome.
func (m *Manager) forgetOtherCluster(server string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.savedServer != "" && m.savedServer != server {
		m.log.Info("the kubeconfig points at another API server than the saved token's; checking the token and the token controller again",
			logging.KeyURL, server, "saved", m.savedServer)
		m.tokenMode = TokenFromSecret
	}
}

// checkSaved checks the saved token once, cheaply (one
// SelfSubjectAccessReview). It reports whether the saved credentials stay;
// an error means the check itself could not run (retried next round).
func (m *Manager) checkSaved(ctx context.Context, cur creds, configured, ca string) (bool, error) {
	if (configured != "") != (cur.source == TokenFromConfig) || (configured != "" && cur.token != configured) {
		m.clearProvisional()
		return false, nil // kubernetes.service_token changed: the configuration wins
	}
	vctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	ok, why, err := VerifyToken(vctx, m.base0(), cur.token)
	cancel()
	if err != nil {
		return false, err
	}
	m.clearProvisional()
	if !ok {
		m.log.Info("the saved Kubernetes token is no longer accepted; getting a new one (the control-plane link registers again)", logging.KeyReason, why)
		return false, nil
	}
	cur.verified = true
	if ca != "" {
		cur.caData = ca
	}
	m.setCreds(cur)
	m.log.Info("reusing the saved Kubernetes token", logging.KeySource, cur.source)
	return true, nil
}

func (m *Manager) clearProvisional() {
	m.mu.Lock()
	m.provisional = false
	m.mu.Unlock()
}

func (m *Manager) base0() *rest.Config {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.base
}

// save persists the current credentials and the token-controller outcome.
func (m *Manager) save() {
	if m.store == nil {
		return
	}
	m.mu.Lock()
	c, mode := m.cred, m.tokenMode
	server := m.savedServer
	if m.admin != nil {
		server = m.admin.Host
	}
	m.mu.Unlock()
	s := Saved{Server: server, Token: c.token, CAData: c.caData, Source: c.source, Secret: c.secret,
		Issued: c.issued, Expires: c.expires, TokenMode: mode}
	m.mu.Lock()
	same := m.lastSaved == s
	m.lastSaved = s
	m.mu.Unlock()
	if same {
		return // every round confirms the same token: write only changes
	}
	if err := m.store.SaveCredentials(s); err != nil {
		m.log.Error("could not save the Kubernetes credentials; a restart will mint new ones and register again", logging.KeyErr, err)
	}
}

// Unreachable says why the API server cannot be reached now, or returns
// nil while it answers (and before the first probe). The proxy answers
// Kubernetes calls with it at once instead of letting each one time out.
func (m *Manager) Unreachable() error {
	select {
	case <-m.probed:
	default:
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.reachable {
		return nil
	}
	return errors.New(m.probeErr)
}

// Nudge asks for a probe now (a proxied call just failed to reach the API
// server), so health, status and the proxy learn of an outage at once.
func (m *Manager) Nudge() {
	select {
	case m.nudge <- struct{}{}:
	default:
	}
}

// Adopt makes s the current credentials, as a start from saved ones does:
// used at once and checked once, with one SelfSubjectAccessReview, at the
// next round. An HA leader adopts the cluster's shared token this way
// before its link starts, so the credentials fingerprint matches and it
// resumes without registering, in every token mode. A configured
// kubernetes.service_token wins; an expired or identical token is not
// adopted. It reports whether the credentials changed.
func (m *Manager) Adopt(s Saved) bool {
	if s.Token == "" || (!s.Expires.IsZero() && !m.now().Before(s.Expires)) || m.cfg.ServiceToken.Reveal() != "" {
		return false
	}
	m.mu.Lock()
	same := m.cred.token == s.Token && m.cred.caData == s.CAData
	if !same {
		m.provisional = true
	}
	m.mu.Unlock()
	if same {
		return false
	}
	m.setCreds(creds{token: s.Token, caData: s.CAData, source: s.Source, secret: s.Secret, issued: s.Issued, expires: s.Expires})
	m.Nudge()
	return true
}
