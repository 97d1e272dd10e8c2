package config

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
)

// envVar is one environment override: name, what it sets, and its doc line.
type envVar struct {
	Name string
	Doc  string
	Set  func(c *Config, v string) error
}

// EnvVars is the table of PIPEOPS_* overrides (protocol.md §1). PIPEOPS_TOKEN,
// PIPEOPS_TOKEN_FILE, PIPEOPS_CONFIG and PIPEOPS_KUBECONFIG are read elsewhere
// (token resolution, Load, kubeconfig discovery) but listed here for docs.
var EnvVars = []envVar{
	{"PIPEOPS_API_URL", "control plane base URL (default https://api.pipeops.io)", func(c *Config, v string) error { c.PipeOps.APIURL = v; return nil }},
	{"PIPEOPS_TOKEN", "install token (required); prefer the token file or systemd credential", nil},
	{"PIPEOPS_TOKEN_FILE", "file holding the install token", nil},
	{"PIPEOPS_CONFIG", "config file path (default /etc/pipeops/agent.yaml)", nil},
	{"PIPEOPS_KUBECONFIG", "kubeconfig path, tried after kubernetes.kubeconfig", nil},
	{"PIPEOPS_CLUSTER_NAME", "cluster name sent at registration (default default-cluster)", func(c *Config, v string) error { c.Agent.Name = v; return nil }},
	{"PIPEOPS_AGENT_ID", "override the derived agent id", func(c *Config, v string) error { c.Agent.ID = v; return nil }},
	{"PIPEOPS_LOG_LEVEL", "debug, info, warn or error (default info)", func(c *Config, v string) error { c.Logging.Level = v; return nil }},
	{"PIPEOPS_LOG_FORMAT", "auto, json or text (default auto)", func(c *Config, v string) error { c.Logging.Format = v; return nil }},
	{"PIPEOPS_PORT", "local HTTP port (default 8080)", setInt(func(c *Config) *int { return &c.Agent.Port })},
	{"PIPEOPS_BIND_ADDRESS", "local HTTP bind address (default 127.0.0.1)", func(c *Config, v string) error { c.Agent.BindAddress = v; return nil }},
	{"PIPEOPS_ENABLE_SSE", "serve the dashboard's server-sent events (default true)", setBool(func(c *Config) *bool { return &c.Agent.EnableSSE })},
	{"PIPEOPS_ENABLE_WEBSOCKET", "serve the dashboard's WebSocket (default true)", setBool(func(c *Config) *bool { return &c.Agent.EnableWebSocket })},
	{"PIPEOPS_STATE_DIR", "state directory (default $STATE_DIRECTORY or /var/lib/pipeops)", func(c *Config, v string) error { c.Agent.StateDir = v; return nil }},
	{"PIPEOPS_SOCKET", "local API socket (default $RUNTIME_DIRECTORY/agent.sock)", func(c *Config, v string) error { c.Agent.Socket = v; return nil }},
	{"PIPEOPS_HEARTBEAT_INTERVAL", "heartbeat interval (default 30s)", setDur(func(c *Config) *Duration { return &c.Agent.HeartbeatInterval })},
	{"PIPEOPS_AGENT_GRAFANA_SUB_PATH", "serve Grafana from the PipeOps proxy sub-path (default true)", setBool(func(c *Config) *bool { return &c.Agent.GrafanaSubPath })},
	{"PIPEOPS_MONITORING_ENABLED", "install the monitoring stack (default false)", setBool(func(c *Config) *bool { return &c.Monitoring.Enabled })},
}

// Prefixes of variables that belong to other tools (installer, tests) and
// are not typos.
var foreignPrefixes = []string{"PIPEOPS_INSTALL_", "PIPEOPS_TEST_", "PIPEOPS_DOWNLOAD_", "PIPEOPS_SKIP_", "PIPEOPS_FORCE_", "PIPEOPS_DRY_RUN", "PIPEOPS_BINARY_DIR", "PIPEOPS_ARCH", "PIPEOPS_VERSION", "PIPEOPS_DEBUG_"}

func setInt(f func(*Config) *int) func(*Config, string) error {
	return func(c *Config, v string) error {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil {
			return fmt.Errorf("want an integer")
		}
		*f(c) = n
		return nil
	}
}

func setBool(f func(*Config) *bool) func(*Config, string) error {
	return func(c *Config, v string) error {
		b, err := strconv.ParseBool(strings.TrimSpace(v))
		if err != nil {
			return fmt.Errorf("want true or false")
		}
		*f(c) = b
		return nil
	}
}

func setDur(f func(*Config) *Duration) func(*Config, string) error {
	return func(c *Config, v string) error {
		d, err := time.ParseDuration(strings.TrimSpace(v))
		if err != nil {
			return fmt.Errorf("want a duration such as 30s")
		}
		*f(c) = Duration(d)
		return nil
	}
}

// envError is an override that could not be parsed; it reports as a field.
func envError(name, v string, err error) error {
	return &FieldError{Field: "environment " + name, Value: v, Err: err}
}

// applyEnv applies the table and returns warnings for unknown PIPEOPS_* names.
// Parse errors are kept and surface from Validate (envErrs).
func applyEnv(c *Config, getenv func(string) string, environ []string) []string {
	known := map[string]bool{}
	for _, e := range EnvVars {
		known[e.Name] = true
		v := getenv(e.Name)
		if v == "" || e.Set == nil {
			continue
		}
		if err := e.Set(c, v); err != nil {
			c.envErrs = append(c.envErrs, envError(e.Name, v, err))
		}
	}
	var warnings []string
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, "PIPEOPS_") || known[name] || hasForeignPrefix(name) {
			continue
		}
		warnings = append(warnings, fmt.Sprintf("unknown environment variable %s is ignored (typo? see `pipeops-agent run --help`)", name))
	}
	sort.Strings(warnings)
	return warnings
}

func hasForeignPrefix(name string) bool {
	for _, p := range foreignPrefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}
