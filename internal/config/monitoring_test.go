package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestMonitoringDefaultsFollowTheSpec(t *testing.T) {
	m := Default().Monitoring
	if m.Enabled || m.Namespace != "pipeops-monitoring" || m.Profile != ProfileAuto || m.ReadyTimeout.Std().Minutes() != 5 {
		t.Fatalf("monitoring defaults = %+v", m)
	}
	c := m.Components
	if c.Traefik.Version != "33.1.0" || c.Traefik.Repo != TraefikRepo || c.MetricsServer.Namespace != "kube-system" ||
		c.Prometheus.Release != "kube-prometheus-stack" || c.Loki.Release != "loki" || c.Loki.Chart != "loki-stack" {
		t.Fatalf("component defaults = %+v", c)
	}
	for _, nc := range c.Each() {
		if !nc.Enabled {
			t.Errorf("component %s is off by default; the stack of protocol.md §12 has it on", nc.Name)
		}
	}
}

func TestMonitoringFileOverridesOnlyWhatItNames(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "agent.yaml")
	yaml := `version: 1
monitoring:
  enabled: true
  profile: small
  charts_dir: /opt/pipeops/charts
  components:
    vpa: {enabled: false}
    prometheus:
      version: "65.1.0"
      values:
        prometheus:
          prometheusSpec: {retention: 30d}
        grafana:
          persistence: null
`
	if err := os.WriteFile(f, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, _, err := load(t, f, map[string]string{"PIPEOPS_TOKEN": "tok"})
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("Validate() = %v", err)
	}
	c := cfg.Monitoring.Components
	if c.VPA.Enabled || c.VPA.Chart != "vpa" {
		t.Errorf("vpa = %+v; want disabled with its default chart kept", c.VPA)
	}
	if c.Prometheus.Version != "65.1.0" || c.Prometheus.Repo != PrometheusRepo || c.Prometheus.Chart != "kube-prometheus-stack" {
		t.Errorf("prometheus = %+v; want the pin over the default source", c.Prometheus)
	}
	g, ok := c.Prometheus.Values["grafana"].(map[string]any)
	if !ok || g["persistence"] != nil {
		t.Errorf("values.grafana = %#v; want a map with persistence: null kept (it deletes the default)", c.Prometheus.Values["grafana"])
	}
	if _, present := g["persistence"]; !present {
		t.Errorf("values.grafana.persistence: null was dropped; Helm semantics need the explicit null")
	}
}

func TestMonitoringValidateRejects(t *testing.T) {
	for _, tc := range []struct {
		name  string
		edit  func(m *Monitoring)
		field string
		want  string
	}{
		{"an unknown profile", func(m *Monitoring) { m.Profile = "huge" }, "monitoring.profile", "want auto, small, medium or large"},
		{"a zero ready timeout", func(m *Monitoring) { m.ReadyTimeout = 0 }, "monitoring.ready_timeout", "greater than zero"},
		{"a relative charts dir", func(m *Monitoring) { m.ChartsDir = "charts" }, "monitoring.charts_dir", "absolute path"},
		{"a relative cache dir", func(m *Monitoring) { m.CacheDir = "cache" }, "monitoring.cache_dir", "absolute path"},
		{"grafana without prometheus", func(m *Monitoring) { m.Components.Prometheus.Enabled = false }, "monitoring.components.grafana.enabled", "needs monitoring.components.prometheus"},
		{"a chart source for grafana", func(m *Monitoring) { m.Components.Grafana.Chart = "grafana" }, "monitoring.components.grafana", "part of the prometheus release"},
		{"a bad release name", func(m *Monitoring) { m.Components.Loki.Release = "Loki_Stack" }, "monitoring.components.loki.release", "Helm release name"},
		{"an empty chart", func(m *Monitoring) { m.Components.VPA.Chart = "" }, "monitoring.components.vpa.chart", "is required"},
		{"a repo with an oci chart", func(m *Monitoring) { m.Components.Traefik.Chart = "oci://ghcr.io/traefik/helm/traefik" }, "monitoring.components.traefik.repo", "oci://"},
		{"a repo/chart path", func(m *Monitoring) { m.Components.Loki.Chart = "grafana/loki-stack" }, "monitoring.components.loki.chart", "must be a chart name"},
		{"a missing repo", func(m *Monitoring) { m.Components.MetricsServer.Repo = "" }, "monitoring.components.metrics_server.repo", "chart repository URL"},
		{"a bad namespace", func(m *Monitoring) { m.Components.VPA.Namespace = "Kube_System" }, "monitoring.components.vpa.namespace", "DNS label"},
		{"a version list", func(m *Monitoring) { m.Components.Traefik.Version = "33.1.0 34.0.0" }, "monitoring.components.traefik.version", "one chart version"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Default()
			cfg.PipeOps.Token = "tok"
			tc.edit(&cfg.Monitoring)
			err := cfg.Validate()
			var fe *FieldError
			found := false
			for _, e := range unjoin(err) {
				if errors.As(e, &fe) && fe.Field == tc.field && strings.Contains(fe.Error(), tc.want) {
					found = true
				}
			}
			if !found {
				t.Fatalf("Validate() = %v; want a %s error containing %q", err, tc.field, tc.want)
			}
		})
	}
}

func TestMonitoringValidateAccepts(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(m *Monitoring)
	}{
		{"the defaults", func(*Monitoring) {}},
		{"an oci chart", func(m *Monitoring) {
			m.Components.Traefik.Repo, m.Components.Traefik.Chart = "", "oci://ghcr.io/traefik/helm/traefik"
		}},
		{"a local chart", func(m *Monitoring) {
			m.Components.Loki.Chart, m.Components.Loki.Repo = "/opt/charts/loki-stack-2.10.2.tgz", ""
		}},
		{"air-gapped without repos", func(m *Monitoring) {
			m.ChartsDir = "/opt/charts"
			for _, c := range m.Components.Each() {
				c.Repo = ""
			}
		}},
		{"a disabled component with no source", func(m *Monitoring) { m.Components.VPA = MonitoringComponent{} }},
		{"grafana off, prometheus off", func(m *Monitoring) { m.Components.Grafana.Enabled, m.Components.Prometheus.Enabled = false, false }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Default()
			cfg.PipeOps.Token = "tok"
			tc.edit(&cfg.Monitoring)
			if err := cfg.Validate(); err != nil {
				t.Fatalf("Validate() = %v; want nil", err)
			}
		})
	}
}

func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	if err == nil {
		return nil
	}
	return []error{err}
}
