package charts

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"strings"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
	"github.com/pipeops/pipeops-vm-agent/internal/state"
)

// Keys of generated credentials in state.State.Secrets (protocol.md §10, §13.12).
const (
	SecretGrafanaPassword    = "grafana_admin_password"
	SecretPrometheusPassword = "prometheus_password"
	SecretLokiPassword       = "loki_password"
)

// secret returns the persisted credential key, generating and persisting it
// on first use. It is never regenerated: the reference agent's per-start
// passwords drifted from what Grafana had stored.
func (m *Manager) secret(key string) (string, error) {
	if v := m.opts.State.Get().Secrets[key]; v != "" {
		return v, nil
	}
	var out string
	err := m.opts.State.Update(func(s *state.State) error {
		if v := s.Secrets[key]; v != "" { // another round won the race
			out = v
			return nil
		}
		v, err := generateSecret()
		if err != nil {
			return err
		}
		if s.Secrets == nil {
			s.Secrets = map[string]string{}
		}
		s.Secrets[key], out = v, v
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("persist generated %s: %w", key, err)
	}
	return out, nil
}

// adoptSecret persists a credential an earlier installer (the reference
// agent) already put into a release, instead of generating a new one that
// Grafana, which keeps its admin password in its database, would ignore.
func (m *Manager) adoptSecret(key, value string) {
	if value == "" || m.opts.State.Get().Secrets[key] != "" {
		return
	}
	err := m.opts.State.Update(func(s *state.State) error {
		if s.Secrets[key] != "" {
			return nil
		}
		if s.Secrets == nil {
			s.Secrets = map[string]string{}
		}
		s.Secrets[key] = value
		return nil
	})
	if err != nil {
		m.log.Warn("cannot persist the adopted credential", "key", key, "err", err)
		return
	}
	m.log.Info("adopted the credential found in the existing release", "key", key)
}

// generateSecret is 32 random bytes, base64 without padding (43 characters,
// URL-safe so it needs no quoting in grafana.ini or a URL).
func generateSecret() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate secret: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// Endpoint is one advertised monitoring service. Password is a secret: never log it.
type Endpoint struct {
	Name      string // prometheus, loki or grafana
	Namespace string
	Service   string
	Port      int
	URL       string
	Username  string
	Password  string
	SSL       bool
}

// Endpoints returns the ready components' endpoints, in a fixed order.
func (m *Manager) Endpoints() []Endpoint {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Endpoint
	for _, n := range []string{"prometheus", "loki", "grafana"} {
		if e, ok := m.endpoints[n]; ok {
			out = append(out, e)
		}
	}
	return out
}

func (m *Manager) endpointList() []apitype.MonitoringEndpoint {
	var out []apitype.MonitoringEndpoint
	for _, n := range []string{"prometheus", "loki", "grafana"} {
		if e, ok := m.endpoints[n]; ok {
			out = append(out, apitype.MonitoringEndpoint{Name: n, URL: e.URL})
		}
	}
	return out
}

// serviceURL uses the configured cluster domain, never a hard-coded
// cluster.local (protocol.md §13.29).
func (m *Manager) serviceURL(svc, namespace string, port int) string {
	return fmt.Sprintf("http://%s.%s.svc.%s:%d", svc, namespace, m.opts.ClusterDomain, port)
}

// endpointFor builds the advertised endpoint of one component from the
// Service its release created, found in the release manifest.
func (m *Manager) endpointFor(name string, c *Component, manifest string) (Endpoint, bool) {
	svcs := services(manifest, c.Namespace)
	var pick *serviceInfo
	for i := range svcs {
		s := &svcs[i]
		if s.Headless {
			continue
		}
		switch name {
		case "prometheus":
			if strings.HasSuffix(s.Name, "-prometheus") && s.hasPort(9090) {
				pick = s
			}
		case "grafana":
			if s.Name == grafanaService(c.Release) {
				pick = s
			}
		case "loki":
			if (s.Name == c.Release || strings.HasSuffix(s.Name, "-loki")) && s.hasPort(3100) {
				pick = s
			}
		}
		if pick != nil {
			break
		}
	}
	if pick == nil {
		return Endpoint{}, false
	}
	port := map[string]int{"prometheus": 9090, "loki": 3100, "grafana": grafanaPort}[name]
	if !pick.hasPort(port) && len(pick.Ports) > 0 {
		port = pick.Ports[0]
	}
	key := map[string]string{"prometheus": SecretPrometheusPassword, "loki": SecretLokiPassword, "grafana": SecretGrafanaPassword}[name]
	pw, err := m.secret(key)
	if err != nil {
		m.log.Warn("cannot persist a monitoring credential; not advertising it", "component", name, "err", err)
		return Endpoint{}, false
	}
	u := m.serviceURL(pick.Name, pick.Namespace, port)
	return Endpoint{Name: name, Namespace: pick.Namespace, Service: pick.Name, Port: port, URL: u,
		Username: "admin", Password: pw, SSL: strings.HasPrefix(u, "https://")}, true
}

// FillHeartbeat is the control-plane client's heartbeat contributor: the
// prometheus_*, loki_* and grafana_* fields, only for ready components.
// *_ssl tells the truth about the URL's scheme (the reference always sent
// prometheus_ssl: true for an http URL).
func (m *Manager) FillHeartbeat(_ context.Context, hb *protocol.Heartbeat) {
	for _, e := range m.Endpoints() {
		ssl := e.SSL
		switch e.Name {
		case "prometheus":
			hb.PrometheusURL, hb.PrometheusUsername, hb.PrometheusPassword, hb.PrometheusSSL = e.URL, e.Username, e.Password, &ssl
		case "loki":
			hb.LokiURL, hb.LokiUsername, hb.LokiPassword, hb.LokiSSL = e.URL, e.Username, e.Password, &ssl
		case "grafana":
			hb.GrafanaURL, hb.GrafanaUsername, hb.GrafanaPassword, hb.GrafanaSSL = e.URL, e.Username, e.Password, &ssl
		}
	}
}
