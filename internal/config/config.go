// Package config is the agent's one configuration schema. Layers apply in
// this order: Default() → /etc/pipeops/agent.yaml → /etc/pipeops/agent.d/*.yaml
// (lexical order) → PIPEOPS_* environment variables. Files are decoded
// strictly: an unknown or duplicate key is an error naming the file and line.
// Validate returns every problem at once, each a *FieldError naming the field.
package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// ErrInvalid marks configuration errors: the agent exits 2 on them, and the
// unit's RestartPreventExitStatus=2 stops systemd from restarting it.
var ErrInvalid = errors.New("invalid configuration")

// Config is the whole schema. Field names follow the product brief's example.
type Config struct {
	Version    int        `json:"version" yaml:"version"`
	Agent      Agent      `json:"agent" yaml:"agent"`
	PipeOps    PipeOps    `json:"pipeops" yaml:"pipeops"`
	Kubernetes Kubernetes `json:"kubernetes" yaml:"kubernetes"`
	Logging    Logging    `json:"logging" yaml:"logging"`
	Tunnel     Tunnel     `json:"tunnel" yaml:"tunnel"`
	Proxy      Proxy      `json:"proxy" yaml:"proxy"`
	Gateway    Gateway    `json:"gateway" yaml:"gateway"`
	Monitoring Monitoring `json:"monitoring" yaml:"monitoring"`
	Security   Security   `json:"security" yaml:"security"`
	// HA is high availability across server nodes (docs/ha.md); off, it
	// is absent from dumps and the agent behaves as a single-VM install.
	HA HA `json:"ha,omitzero" yaml:"ha"`

	// Sources lists the files that were read, in order (not part of the schema).
	Sources []string `json:"-" yaml:"-"`
	// TokenSource says where the token came from, for messages; never the value.
	TokenSource string `json:"-" yaml:"-"`

	envErrs []error // unparsable environment overrides, reported by Validate
}

// Agent is the agent's identity and local endpoints.
type Agent struct {
	ID                string            `json:"id" yaml:"id"`
	Name              string            `json:"name" yaml:"name"`
	Port              int               `json:"port" yaml:"port"`
	BindAddress       string            `json:"bind_address" yaml:"bind_address"`
	GrafanaSubPath    bool              `json:"grafana_sub_path" yaml:"grafana_sub_path"`
	Labels            map[string]string `json:"labels,omitempty" yaml:"labels"`
	Region            string            `json:"region,omitempty" yaml:"region"`
	CloudProvider     string            `json:"cloud_provider,omitempty" yaml:"cloud_provider"`
	HeartbeatInterval Duration          `json:"heartbeat_interval" yaml:"heartbeat_interval"`
	StateDir          string            `json:"state_dir" yaml:"state_dir"`
	Socket            string            `json:"socket" yaml:"socket"`
	EnableSSE         bool              `json:"enable_sse" yaml:"enable_sse"`
	EnableWebSocket   bool              `json:"enable_websocket" yaml:"enable_websocket"`

	// ServerIP replaces the looked-up public address sent as
	// register.server_ip (NAT setups that know better).
	ServerIP string `json:"server_ip,omitempty" yaml:"server_ip"`
	// PublicIPServices answer a GET with the caller's public address, asked
	// in order (each for at most 3 s, at most hourly); [] asks none. Unset:
	// the three of protocol.md §4.1, or none when pipeops.api_url is on
	// loopback or a private network (that control plane needs the local address).
	PublicIPServices []string `json:"public_ip_services,omitempty" yaml:"public_ip_services"`
	// CloudMetadata lets the agent ask the cloud's instance metadata service
	// (169.254.169.254) for its provider and region when the node does not
	// say. Off by default.
	CloudMetadata bool `json:"cloud_metadata" yaml:"cloud_metadata"`
	// JoinServerURL replaces heartbeat.worker_join.server_url (default:
	// https://<the node's InternalIP>:6443).
	JoinServerURL string `json:"join_server_url,omitempty" yaml:"join_server_url"`
}

// PipeOps is the control-plane connection.
type PipeOps struct {
	APIURL    string    `json:"api_url" yaml:"api_url"`
	Token     Secret    `json:"token,omitempty" yaml:"token"`
	TokenFile string    `json:"token_file,omitempty" yaml:"token_file"`
	Timeout   Duration  `json:"timeout" yaml:"timeout"`
	ReadLimit int64     `json:"read_limit_bytes" yaml:"read_limit_bytes"`
	Reconnect Reconnect `json:"reconnect" yaml:"reconnect"`
	TLS       TLS       `json:"tls" yaml:"tls"`
}

// Reconnect is the backoff of protocol.md §8.4. The agent retries forever.
type Reconnect struct {
	Enabled     bool     `json:"enabled" yaml:"enabled"`
	MaxAttempts int      `json:"max_attempts" yaml:"max_attempts"`
	Interval    Duration `json:"interval" yaml:"interval"`
	MaxInterval Duration `json:"max_interval" yaml:"max_interval"`
}

// TLS configures trust toward the control plane.
type TLS struct {
	Enabled            bool     `json:"enabled" yaml:"enabled"`
	InsecureSkipVerify bool     `json:"insecure_skip_verify" yaml:"insecure_skip_verify"`
	CAFile             string   `json:"ca_file,omitempty" yaml:"ca_file"`
	CertFile           string   `json:"cert_file,omitempty" yaml:"cert_file"`
	KeyFile            string   `json:"key_file,omitempty" yaml:"key_file"`
	PinSHA256          []string `json:"pin_sha256,omitempty" yaml:"pin_sha256"`
}

// Kubernetes is how the agent reaches the local cluster.
type Kubernetes struct {
	Kubeconfig    string `json:"kubeconfig,omitempty" yaml:"kubeconfig"`
	InCluster     bool   `json:"in_cluster" yaml:"in_cluster"`
	Namespace     string `json:"namespace" yaml:"namespace"`
	ClusterDomain string `json:"cluster_domain" yaml:"cluster_domain"`
	// ServiceToken and CACertData replace the minted token (protocol.md §14.3).
	ServiceToken Secret `json:"service_token,omitempty" yaml:"service_token"`
	CACertData   string `json:"ca_cert_data,omitempty" yaml:"ca_cert_data"`
	// TokenTTL is the lifetime requested for the minted ServiceAccount token.
	TokenTTL Duration `json:"token_ttl" yaml:"token_ttl"`
	// ProtectedNamespaces are namespaces where the control plane's
	// ServiceAccount may only read, besides kube-system, kube-public,
	// kube-node-lease, the agent's namespace and the monitoring stack's.
	ProtectedNamespaces []string `json:"protected_namespaces,omitempty" yaml:"protected_namespaces"`
}

// Logging selects level and format.
type Logging struct {
	Level  string `json:"level" yaml:"level"`
	Format string `json:"format" yaml:"format"`
}

// ParseLevel maps logging.level's names (debug|info|warn|error, any case;
// empty is info) to a slog level. It lives here and not in package logging
// so that pipeopsctl, which validates config, does not link go-systemd's
// journal package through logging.
func ParseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "debug":
		return slog.LevelDebug, nil
	case "info", "":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("unknown log level %q (want debug, info, warn or error)", s)
}

// Tunnel is the yamux reverse-tunnel side (protocol.md §7).
type Tunnel struct {
	Enabled           bool      `json:"enabled" yaml:"enabled"`
	PollInterval      Duration  `json:"poll_interval" yaml:"poll_interval"`
	InactivityTimeout Duration  `json:"inactivity_timeout" yaml:"inactivity_timeout"`
	MaxStreams        int       `json:"max_streams" yaml:"max_streams"`
	StreamWindow      int       `json:"stream_window_bytes" yaml:"stream_window_bytes"`
	MemoryBudget      int64     `json:"memory_budget_bytes" yaml:"memory_budget_bytes"`
	Forwards          []Forward `json:"forwards" yaml:"forwards"`
}

// Forward is a named host address the control plane may open streams to.
type Forward struct {
	Name      string `json:"name" yaml:"name"`
	LocalAddr string `json:"local_addr" yaml:"local_addr"`
}

// Proxy bounds the Kubernetes API proxy (protocol.md §6).
type Proxy struct {
	MaxInFlight      int   `json:"max_in_flight" yaml:"max_in_flight"`
	MaxBufferedBytes int64 `json:"max_buffered_bytes" yaml:"max_buffered_bytes"`
	// MemoryBudget bounds the bytes of buffered responses held at once
	// across all requests (bodies and their encoded messages).
	MemoryBudget   int64    `json:"memory_budget_bytes" yaml:"memory_budget_bytes"`
	DefaultTimeout Duration `json:"default_timeout" yaml:"default_timeout"`
}

// Security is the dial policy for targets the control plane or cluster
// objects name (internal/egress): Services of proxy_request, the app
// WebSocket relay and tunnel streams never reach this host's loopback,
// link-local or own addresses, except those listed here.
type Security struct {
	// AllowedTargetCIDRs are CIDRs (or single addresses) such targets may
	// reach anyway. It is the only setting that widens the policy.
	AllowedTargetCIDRs []string `json:"allowed_target_cidrs,omitempty" yaml:"allowed_target_cidrs"`
}

// HA is high availability across server nodes (docs/ha.md): an agent on
// every server VM, one of them active through a Kubernetes Lease.
type HA struct {
	Enabled bool `json:"enabled" yaml:"enabled"`
	// Identity names this agent among the candidates (default: the host name).
	Identity string `json:"identity,omitempty" yaml:"identity"`
	// Lease settings; zero means 10s, 7s and 1s. The renew deadline must be
	// shorter than the lease: a leader that cannot renew steps down before
	// anyone may take its lease.
	LeaseDuration Duration `json:"lease_duration,omitzero" yaml:"lease_duration"`
	RenewDeadline Duration `json:"renew_deadline,omitzero" yaml:"renew_deadline"`
	RetryPeriod   Duration `json:"retry_period,omitzero" yaml:"retry_period"`
}

// Lease is the lease settings with the defaults filled in.
func (h HA) Lease() (lease, renew, retry time.Duration) {
	lease, renew, retry = h.LeaseDuration.Std(), h.RenewDeadline.Std(), h.RetryPeriod.Std()
	if lease == 0 {
		lease = 10 * time.Second
	}
	if renew == 0 {
		renew = 7 * time.Second
	}
	if retry == 0 {
		retry = time.Second
	}
	return lease, renew, retry
}

// Gateway is ingress route registration (protocol.md §9).
type Gateway struct {
	Enabled         bool     `json:"enabled" yaml:"enabled"`
	RefreshInterval Duration `json:"refresh_interval" yaml:"refresh_interval"`
	ForceTunnelMode bool     `json:"force_tunnel_mode" yaml:"force_tunnel_mode"`
}

// Monitoring is the Helm-installed monitoring stack (protocol.md §12).
type Monitoring struct {
	Enabled   bool   `json:"enabled" yaml:"enabled"`
	Namespace string `json:"namespace" yaml:"namespace"`
	// Timeout bounds each Helm install, upgrade or rollback of one release.
	Timeout Duration `json:"timeout" yaml:"timeout"`
	// ReadyTimeout bounds the wait for one release's workloads to become Ready.
	ReadyTimeout Duration `json:"ready_timeout" yaml:"ready_timeout"`
	// Profile sizes the stack: auto (from summed node allocatable), small, medium or large.
	Profile string `json:"profile" yaml:"profile"`
	// ChartsDir is the air-gapped mode: every chart is read from this
	// directory (<chart>-<version>.tgz, <chart>.tgz or <chart>/), never downloaded.
	ChartsDir string `json:"charts_dir,omitempty" yaml:"charts_dir"`
	// CacheDir holds Helm's repository cache and registry config
	// (default $CACHE_DIRECTORY/helm or /var/cache/pipeops/helm).
	CacheDir string `json:"cache_dir,omitempty" yaml:"cache_dir"`
	// ACMEEmail is the account e-mail of the letsencrypt ClusterIssuers.
	ACMEEmail  string               `json:"acme_email" yaml:"acme_email"`
	Components MonitoringComponents `json:"components" yaml:"components"`
}

// Default is the configuration with nothing set.
func Default() *Config {
	return &Config{
		Version: 1,
		Agent: Agent{
			Name: "default-cluster", Port: 8080, BindAddress: "127.0.0.1", GrafanaSubPath: true,
			HeartbeatInterval: D(30 * time.Second), EnableSSE: true, EnableWebSocket: true,
		},
		PipeOps: PipeOps{
			APIURL: "https://api.pipeops.io", Timeout: D(30 * time.Second), ReadLimit: 32 << 20,
			Reconnect: Reconnect{Enabled: true, Interval: D(time.Second), MaxInterval: D(15 * time.Second)},
			TLS:       TLS{Enabled: true},
		},
		Kubernetes: Kubernetes{Namespace: "pipeops-system", ClusterDomain: "cluster.local", TokenTTL: D(24 * time.Hour)},
		Logging:    Logging{Level: "info", Format: "auto"},
		Tunnel: Tunnel{
			Enabled: true, PollInterval: D(5 * time.Second), InactivityTimeout: D(5 * time.Minute),
			MaxStreams: 1024, StreamWindow: 8 << 20, MemoryBudget: 128 << 20,
		},
		Proxy:      Proxy{MaxInFlight: 256, MaxBufferedBytes: 64 << 20, MemoryBudget: 192 << 20, DefaultTimeout: D(2 * time.Minute)},
		Gateway:    Gateway{Enabled: true, RefreshInterval: D(4 * time.Hour), ForceTunnelMode: false},
		Monitoring: defaultMonitoring(),
	}
}

// Duration is a time.Duration written as a Go duration string ("30s").
type Duration time.Duration

// D converts a time.Duration.
func D(d time.Duration) Duration { return Duration(d) }

// Std returns the standard library value.
func (d Duration) Std() time.Duration { return time.Duration(d) }

func (d Duration) String() string { return time.Duration(d).String() }

// UnmarshalYAML accepts "30s", "5m", "4h".
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return fmt.Errorf("line %d: want a duration such as \"30s\"", n.Line)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("line %d: invalid duration %q (use a value such as \"30s\" or \"5m\")", n.Line, s)
	}
	*d = Duration(v)
	return nil
}

// MarshalJSON writes the duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// MarshalYAML writes the duration string.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// Secret is a string that never prints: logs, `config show` and JSON output
// render it as "[redacted]". Use Reveal where the value is really needed.
type Secret string

const redacted = "[redacted]"

// Reveal returns the secret value.
func (s Secret) Reveal() string { return string(s) }

func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return redacted
}

// LogValue keeps the secret out of slog output.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// MarshalJSON redacts.
func (s Secret) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// MarshalYAML redacts.
func (s Secret) MarshalYAML() (any, error) { return s.String(), nil }

// FieldError is one invalid field. Value is already redacted for secrets.
type FieldError struct {
	Field string
	Value string
	Err   error
}

func (e *FieldError) Error() string {
	if e.Value == "" {
		return fmt.Sprintf("%s: %v", e.Field, e.Err)
	}
	return fmt.Sprintf("%s: %v (got %q)", e.Field, e.Err, e.Value)
}

func (e *FieldError) Unwrap() []error { return []error{e.Err, ErrInvalid} }
