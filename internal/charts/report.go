package charts

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"strings"

	"github.com/pipeops/pipeops-vm-agent/internal/logging"
	"github.com/pipeops/pipeops-vm-agent/internal/monitor"
)

// secret returns the stored credential key, generating and storing it on
// first use. It is never regenerated: the reference agent's per-start
// passwords drifted from what Grafana had stored.
func (m *Engine) secret(key string) (string, error) {
	if v, ok := m.sink.Secret(key); ok {
		return v, nil
	}
	v, err := generateSecret()
	if err != nil {
		return "", err
	}
	v, err = m.sink.PutSecret(key, v, "generated")
	if err != nil {
		return "", fmt.Errorf("persist generated %s: %w", key, err)
	}
	return v, nil
}

// adoptSecret stores a credential an earlier installer (the reference
// agent, or a worker whose daemon died before storing it) already put into
// a release, instead of generating a new one that Grafana, which keeps its
// admin password in its database, would ignore.
func (m *Engine) adoptSecret(key, value string) {
	if _, ok := m.sink.Secret(key); value == "" || ok {
		return
	}
	if _, err := m.sink.PutSecret(key, value, "adopted from the existing release"); err != nil {
		m.log.Warn("cannot persist the adopted credential", "key", key, logging.KeyErr, err)
	}
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

// serviceURL uses the configured cluster domain, never a hard-coded
// cluster.local (protocol.md §13.29).
func (m *Engine) serviceURL(svc, namespace string, port int) string {
	return fmt.Sprintf("http://%s.%s.svc.%s:%d", svc, namespace, m.opts.ClusterDomain, port)
}

// endpointFor builds the advertised endpoint of one component from the
// Service its release created, found in the release manifest.
func (m *Engine) endpointFor(name string, c *Component, manifest string) (Endpoint, bool) {
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
	key := map[string]string{"prometheus": monitor.SecretPrometheusPassword, "loki": monitor.SecretLokiPassword,
		"grafana": monitor.SecretGrafanaPassword}[name]
	pw, err := m.secret(key)
	if err != nil {
		m.log.Warn("cannot persist a monitoring credential; not advertising it", logging.KeyComponent, name, logging.KeyErr, err)
		return Endpoint{}, false
	}
	u := m.serviceURL(pick.Name, pick.Namespace, port)
	return Endpoint{Name: name, Namespace: pick.Namespace, Service: pick.Name, Port: port, URL: u,
		Username: "admin", Password: pw, SSL: strings.HasPrefix(u, "https://")}, true
}
