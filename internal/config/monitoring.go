package config

import (
	"fmt"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// MonitoringComponents switches each release of the stack on or off.
type MonitoringComponents struct {
	MetricsServer MonitoringComponent `json:"metrics_server" yaml:"metrics_server"`
	VPA           MonitoringComponent `json:"vpa" yaml:"vpa"`
	// CoreDNS is the *.pipeops.internal rewrite of the cluster's Corefile
	// (not a Helm release: only enabled applies).
	CoreDNS MonitoringComponent `json:"coredns" yaml:"coredns"`
	// Traefik is installed only when the cluster has no ingress controller.
	Traefik MonitoringComponent `json:"traefik" yaml:"traefik"`
	// CertManager is skipped when the cluster already runs cert-manager;
	// either way the agent adds its ClusterIssuers.
	CertManager MonitoringComponent `json:"cert_manager" yaml:"cert_manager"`
	Prometheus  MonitoringComponent `json:"prometheus" yaml:"prometheus"`
	// Grafana is part of the prometheus release (kube-prometheus-stack).
	Grafana MonitoringComponent `json:"grafana" yaml:"grafana"`
	Loki    MonitoringComponent `json:"loki" yaml:"loki"`
}

// MonitoringComponent is one release and where its chart comes from: a
// repository (repo + chart + version), an OCI reference (chart: oci://…),
// or a local .tgz or directory (chart: /path). Values are deep-merged over
// the agent's defaults.
type MonitoringComponent struct {
	Enabled   bool           `json:"enabled" yaml:"enabled"`
	Repo      string         `json:"repo,omitempty" yaml:"repo"`
	Chart     string         `json:"chart,omitempty" yaml:"chart"`
	Version   string         `json:"version,omitempty" yaml:"version"`
	Release   string         `json:"release,omitempty" yaml:"release"`
	Namespace string         `json:"namespace,omitempty" yaml:"namespace"`
	Values    map[string]any `json:"values,omitempty" yaml:"values"`
}

// Chart repositories and pins of protocol.md §12. An empty version means the
// newest chart in the repository at first install; pin one to make upgrades
// deliberate.
const (
	MetricsServerRepo  = "https://kubernetes-sigs.github.io/metrics-server/"
	VPARepo            = "https://charts.fairwinds.com/stable"
	TraefikRepo        = "https://traefik.github.io/charts"
	TraefikVersion     = "33.1.0"
	CertManagerRepo    = "https://charts.jetstack.io"
	CertManagerVersion = "v1.13.3"
	PrometheusRepo     = "https://prometheus-community.github.io/helm-charts"
	LokiRepo           = "https://grafana.github.io/helm-charts"
)

// DefaultACMEEmail is the ClusterIssuers' ACME account e-mail (protocol.md §12).
const DefaultACMEEmail = "admin@pipeops.io"

// Monitoring profiles (monitoring.profile).
const (
	ProfileAuto   = "auto"
	ProfileSmall  = "small"
	ProfileMedium = "medium"
	ProfileLarge  = "large"
)

// defaultMonitoring is the monitoring section with nothing set: off, as the
// reference agent's PIPEOPS_AUTO_INSTALL_COMPONENTS defaults to false.
func defaultMonitoring() Monitoring {
	return Monitoring{Enabled: false, Namespace: "pipeops-monitoring", Timeout: D(10 * time.Minute),
		ReadyTimeout: D(5 * time.Minute), Profile: ProfileAuto, ACMEEmail: DefaultACMEEmail, Components: DefaultMonitoringComponents()}
}

// DefaultMonitoringComponents is the stack of protocol.md §12. An empty
// namespace means monitoring.namespace.
func DefaultMonitoringComponents() MonitoringComponents {
	return MonitoringComponents{
		MetricsServer: MonitoringComponent{Enabled: true, Repo: MetricsServerRepo, Chart: "metrics-server", Release: "metrics-server", Namespace: "kube-system"},
		VPA:           MonitoringComponent{Enabled: true, Repo: VPARepo, Chart: "vpa", Release: "vpa", Namespace: "pipeops-system"},
		CoreDNS:       MonitoringComponent{Enabled: true},
		Traefik:       MonitoringComponent{Enabled: true, Repo: TraefikRepo, Chart: "traefik", Version: TraefikVersion, Release: "traefik", Namespace: "pipeops-system"},
		CertManager: MonitoringComponent{Enabled: true, Repo: CertManagerRepo, Chart: "cert-manager", Version: CertManagerVersion,
			Release: "cert-manager", Namespace: "cert-manager"},
		Prometheus: MonitoringComponent{Enabled: true, Repo: PrometheusRepo, Chart: "kube-prometheus-stack", Release: "kube-prometheus-stack"},
		Grafana:    MonitoringComponent{Enabled: true},
		Loki:       MonitoringComponent{Enabled: true, Repo: LokiRepo, Chart: "loki-stack", Release: "loki"},
	}
}

// Each returns the components by their config name, in install order
// (protocol.md §12: metrics-server, VPA and CoreDNS, Traefik, cert-manager,
// kube-prometheus-stack, Loki).
func (c *MonitoringComponents) Each() []NamedComponent {
	return []NamedComponent{
		{"metrics_server", &c.MetricsServer}, {"vpa", &c.VPA}, {"coredns", &c.CoreDNS}, {"traefik", &c.Traefik},
		{"cert_manager", &c.CertManager}, {"prometheus", &c.Prometheus}, {"grafana", &c.Grafana}, {"loki", &c.Loki},
	}
}

// NamedComponent pairs a component with its config key.
type NamedComponent struct {
	Name string
	*MonitoringComponent
}

// Helm's release name rule (DNS-1123 subdomain, at most 53 characters).
var reRelease = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)

// validate checks the monitoring section; add reports each problem.
func (m *Monitoring) validate(add func(field, value string, err error)) {
	switch m.Profile {
	case ProfileAuto, ProfileSmall, ProfileMedium, ProfileLarge:
	default:
		add("monitoring.profile", m.Profile, fmt.Errorf("want auto, small, medium or large"))
	}
	if m.ReadyTimeout <= 0 {
		add("monitoring.ready_timeout", m.ReadyTimeout.String(), fmt.Errorf("%w: must be greater than zero", ErrRange))
	}
	if m.ChartsDir != "" && !filepath.IsAbs(m.ChartsDir) {
		add("monitoring.charts_dir", m.ChartsDir, fmt.Errorf("must be an absolute path"))
	}
	if at := strings.IndexByte(m.ACMEEmail, '@'); m.ACMEEmail != "" && (at < 1 || at == len(m.ACMEEmail)-1 || strings.ContainsAny(m.ACMEEmail, " \t\n")) {
		add("monitoring.acme_email", m.ACMEEmail, fmt.Errorf("must be an e-mail address such as %s", DefaultACMEEmail))
	}
	if m.CacheDir != "" && !filepath.IsAbs(m.CacheDir) {
		add("monitoring.cache_dir", m.CacheDir, fmt.Errorf("must be an absolute path"))
	}
	for _, c := range m.Components.Each() {
		field := "monitoring.components." + c.Name
		if c.Name == "coredns" {
			if c.Repo != "" || c.Chart != "" || c.Version != "" || c.Release != "" || c.Namespace != "" || c.Values != nil {
				add(field, "", fmt.Errorf("coredns is an edit of the cluster's Corefile, not a chart: only enabled applies"))
			}
			continue
		}
		if c.Name == "grafana" {
			// Grafana is a subchart of kube-prometheus-stack: it has no source of its own.
			if c.Repo != "" || c.Chart != "" || c.Version != "" || c.Release != "" || c.Namespace != "" {
				add(field, "", fmt.Errorf("grafana is part of the prometheus release (kube-prometheus-stack): set its chart under monitoring.components.prometheus and its values under prometheus.values.grafana"))
			}
			if c.Enabled && !m.Components.Prometheus.Enabled {
				add(field+".enabled", "true", fmt.Errorf("grafana needs monitoring.components.prometheus.enabled: true"))
			}
			continue
		}
		if !c.Enabled {
			continue
		}
		validateComponent(field, c.MonitoringComponent, m.ChartsDir != "", add)
	}
}

func validateComponent(field string, c *MonitoringComponent, airGapped bool, add func(field, value string, err error)) {
	if c.Release == "" {
		add(field+".release", "", ErrRequired)
	} else if len(c.Release) > 53 || !reRelease.MatchString(c.Release) {
		add(field+".release", c.Release, fmt.Errorf("must be a Helm release name: lowercase letters, digits, '-' and '.', at most 53 characters"))
	}
	if c.Namespace != "" && !reDNSLabel.MatchString(c.Namespace) {
		add(field+".namespace", c.Namespace, fmt.Errorf("must be a DNS label"))
	}
	if strings.ContainsAny(c.Version, " \t\n") {
		add(field+".version", c.Version, fmt.Errorf("must be one chart version such as 33.1.0"))
	}
	switch {
	case c.Chart == "":
		add(field+".chart", "", fmt.Errorf("%w: a chart name with repo, an oci:// reference, or an absolute path to a .tgz or directory", ErrRequired))
	case strings.HasPrefix(c.Chart, "oci://"):
		if c.Repo != "" {
			add(field+".repo", c.Repo, fmt.Errorf("must be empty when chart is an oci:// reference"))
		}
	case strings.HasPrefix(c.Chart, "/"):
		// a local .tgz or chart directory; its existence is checked at install time
	case strings.Contains(c.Chart, "/"):
		add(field+".chart", c.Chart, fmt.Errorf("must be a chart name (use repo for the repository), an oci:// reference or an absolute path"))
	case airGapped:
		// read from monitoring.charts_dir
	default:
		if u, err := url.Parse(c.Repo); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			add(field+".repo", c.Repo, fmt.Errorf("must be a chart repository URL such as %s (or set monitoring.charts_dir for air-gapped installs)", PrometheusRepo))
		}
	}
}
