package config

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/tlsconfig"
)

// Sentinels wrapped by FieldError, for callers that test with errors.Is.
var (
	ErrRequired = errors.New("is required")
	ErrRange    = errors.New("is out of range")
)

var reDNSLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

// Validate checks every field and returns all problems joined, each a
// *FieldError. It runs before anything starts.
func (c *Config) Validate() error {
	var errs []error
	add := func(field, value string, err error) {
		errs = append(errs, &FieldError{Field: field, Value: value, Err: err})
	}
	errs = append(errs, c.envErrs...)

	if c.Version != 1 {
		add("version", fmt.Sprint(c.Version), fmt.Errorf("must be 1"))
	}
	if c.PipeOps.Token == "" {
		add("pipeops.token", "", fmt.Errorf("%w: install it with \"sudo pipeopsctl install --token-file FILE\" (an encrypted systemd credential, or /etc/pipeops/token) or set PIPEOPS_TOKEN", ErrRequired))
	}
	if u, err := url.Parse(c.PipeOps.APIURL); err != nil || u.Host == "" {
		add("pipeops.api_url", c.PipeOps.APIURL, fmt.Errorf("must be an absolute URL such as https://api.pipeops.io"))
	} else if s := u.Scheme; s != "https" && s != "http" && s != "wss" && s != "ws" {
		add("pipeops.api_url", c.PipeOps.APIURL, fmt.Errorf("scheme must be https, http, wss or ws"))
	}
	if c.Agent.Name == "" {
		add("agent.name", "", ErrRequired)
	}
	if c.Agent.Port < 1 || c.Agent.Port > 65535 {
		add("agent.port", fmt.Sprint(c.Agent.Port), fmt.Errorf("%w: want 1-65535", ErrRange))
	}
	if net.ParseIP(c.Agent.BindAddress) == nil && c.Agent.BindAddress != "localhost" {
		add("agent.bind_address", c.Agent.BindAddress, fmt.Errorf("must be an IP address such as 127.0.0.1"))
	}
	if c.Agent.ServerIP != "" && net.ParseIP(c.Agent.ServerIP) == nil {
		add("agent.server_ip", c.Agent.ServerIP, fmt.Errorf("must be an IP address such as 203.0.113.10"))
	}
	for i, s := range c.Agent.PublicIPServices {
		if u, err := url.Parse(s); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			add(fmt.Sprintf("agent.public_ip_services[%d]", i), s, fmt.Errorf("must be an http(s) URL that answers with the caller's address"))
		}
	}
	if s := c.Agent.JoinServerURL; s != "" {
		if u, err := url.Parse(s); err != nil || u.Scheme != "https" || u.Host == "" {
			add("agent.join_server_url", s, fmt.Errorf("must be the server's https URL such as https://10.0.0.2:6443"))
		}
	}
	positive := map[string]Duration{
		"agent.heartbeat_interval":       c.Agent.HeartbeatInterval,
		"pipeops.timeout":                c.PipeOps.Timeout,
		"pipeops.reconnect.interval":     c.PipeOps.Reconnect.Interval,
		"pipeops.reconnect.max_interval": c.PipeOps.Reconnect.MaxInterval,
		"tunnel.inactivity_timeout":      c.Tunnel.InactivityTimeout,
		"proxy.default_timeout":          c.Proxy.DefaultTimeout,
		"gateway.refresh_interval":       c.Gateway.RefreshInterval,
		"monitoring.timeout":             c.Monitoring.Timeout,
		"kubernetes.token_ttl":           c.Kubernetes.TokenTTL,
	}
	for _, f := range slices.Sorted(maps.Keys(positive)) {
		if positive[f] <= 0 {
			add(f, positive[f].String(), fmt.Errorf("%w: must be greater than zero", ErrRange))
		}
	}
	if c.PipeOps.Reconnect.MaxInterval < c.PipeOps.Reconnect.Interval {
		add("pipeops.reconnect.max_interval", c.PipeOps.Reconnect.MaxInterval.String(), fmt.Errorf("must not be below pipeops.reconnect.interval"))
	}
	if c.Kubernetes.TokenTTL > 0 && c.Kubernetes.TokenTTL.Std().Minutes() < 10 {
		add("kubernetes.token_ttl", c.Kubernetes.TokenTTL.String(), fmt.Errorf("%w: the API server's minimum is 10m", ErrRange))
	}
	if c.PipeOps.ReadLimit < 1<<20 {
		add("pipeops.read_limit_bytes", fmt.Sprint(c.PipeOps.ReadLimit), fmt.Errorf("%w: at least 1048576", ErrRange))
	}
	if _, err := ParseLevel(c.Logging.Level); err != nil {
		add("logging.level", c.Logging.Level, fmt.Errorf("want debug, info, warn or error"))
	}
	switch c.Logging.Format {
	case "auto", "json", "text":
	default:
		add("logging.format", c.Logging.Format, fmt.Errorf("want auto, json or text"))
	}
	t := c.PipeOps.TLS
	if (t.CertFile == "") != (t.KeyFile == "") {
		add("pipeops.tls.cert_file", t.CertFile, fmt.Errorf("cert_file and key_file go together: set both or neither"))
	}
	for i, p := range t.PinSHA256 {
		if _, err := ParsePin(p); err != nil {
			add(fmt.Sprintf("pipeops.tls.pin_sha256[%d]", i), p, err)
		}
	}
	if c.HA.Enabled {
		lease, renew, retry := c.HA.Lease()
		switch {
		case lease < time.Second || lease%time.Second != 0:
			add("ha.lease_duration", lease.String(), fmt.Errorf("%w: whole seconds, at least 1s", ErrRange))
		case renew >= lease:
			add("ha.renew_deadline", renew.String(), fmt.Errorf("%w: must be shorter than ha.lease_duration (%s), so a leader that cannot renew steps down before its lease can be taken", ErrRange, lease))
		case retry <= 0 || float64(renew) <= 1.2*float64(retry):
			add("ha.retry_period", retry.String(), fmt.Errorf("%w: must be positive and under ha.renew_deadline / 1.2", ErrRange))
		}
	}
	if !reDNSLabel.MatchString(c.Kubernetes.Namespace) {
		add("kubernetes.namespace", c.Kubernetes.Namespace, fmt.Errorf("must be a DNS label"))
	}
	for i, ns := range c.Kubernetes.ProtectedNamespaces {
		if !reDNSLabel.MatchString(ns) {
			add(fmt.Sprintf("kubernetes.protected_namespaces[%d]", i), ns, fmt.Errorf("must be a namespace name (a DNS label)"))
		}
	}
	if !reDNSLabel.MatchString(c.Monitoring.Namespace) {
		add("monitoring.namespace", c.Monitoring.Namespace, fmt.Errorf("must be a DNS label"))
	}
	c.Monitoring.validate(add)
	if c.Kubernetes.ClusterDomain == "" || strings.HasPrefix(c.Kubernetes.ClusterDomain, ".") {
		add("kubernetes.cluster_domain", c.Kubernetes.ClusterDomain, fmt.Errorf("must be a domain such as cluster.local"))
	}
	if c.Tunnel.MaxStreams < 1 {
		add("tunnel.max_streams", fmt.Sprint(c.Tunnel.MaxStreams), fmt.Errorf("%w: at least 1", ErrRange))
	}
	if c.Tunnel.StreamWindow < 256<<10 || c.Tunnel.StreamWindow > 64<<20 {
		add("tunnel.stream_window_bytes", fmt.Sprint(c.Tunnel.StreamWindow), fmt.Errorf("%w: want 262144-67108864", ErrRange))
	}
	if c.Tunnel.MemoryBudget < int64(c.Tunnel.StreamWindow) {
		add("tunnel.memory_budget_bytes", fmt.Sprint(c.Tunnel.MemoryBudget), fmt.Errorf("%w: must be at least tunnel.stream_window_bytes", ErrRange))
	}
	seen := map[string]bool{}
	for i, f := range c.Tunnel.Forwards {
		field := fmt.Sprintf("tunnel.forwards[%d]", i)
		if f.Name == "" {
			add(field+".name", "", ErrRequired)
		} else if seen[f.Name] {
			add(field+".name", f.Name, fmt.Errorf("duplicate forward name"))
		}
		seen[f.Name] = true
		if _, port, err := net.SplitHostPort(f.LocalAddr); err != nil || port == "" {
			add(field+".local_addr", f.LocalAddr, fmt.Errorf("want host:port such as 127.0.0.1:8080"))
		}
	}
	if c.Proxy.MaxInFlight < 1 {
		add("proxy.max_in_flight", fmt.Sprint(c.Proxy.MaxInFlight), fmt.Errorf("%w: at least 1", ErrRange))
	}
	if c.Proxy.MaxBufferedBytes < 1<<20 {
		add("proxy.max_buffered_bytes", fmt.Sprint(c.Proxy.MaxBufferedBytes), fmt.Errorf("%w: at least 1048576", ErrRange))
	}
	if c.Proxy.MemoryBudget < 1<<20 {
		add("proxy.memory_budget_bytes", fmt.Sprint(c.Proxy.MemoryBudget), fmt.Errorf("%w: at least 1048576", ErrRange))
	}
	for i, s := range c.Security.AllowedTargetCIDRs {
		if _, err := ParseCIDR(s); err != nil {
			add(fmt.Sprintf("security.allowed_target_cidrs[%d]", i), s, err)
		}
	}
	return errors.Join(errs...)
}

// ParseCIDR parses one entry of security.allowed_target_cidrs: a CIDR such
// as 10.0.0.0/8, or a single address (a /32 or /128).
func ParseCIDR(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	if a, err := netip.ParseAddr(s); err == nil && a.Zone() == "" {
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	return netip.Prefix{}, fmt.Errorf("want a CIDR such as 10.0.0.0/8 or an IP address such as 10.0.0.5")
}

// AllowedTargets is security.allowed_target_cidrs parsed; entries that do
// not parse (Validate reports them) are left out.
func (s Security) AllowedTargets() []netip.Prefix {
	out := make([]netip.Prefix, 0, len(s.AllowedTargetCIDRs))
	for _, c := range s.AllowedTargetCIDRs {
		if p, err := ParseCIDR(c); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// ParsePin decodes an SPKI SHA-256 pin given as base64 (as in HPKP and curl's
// --pinnedpubkey "sha256//…") or hex. The TLS builder owns the format.
func ParsePin(p string) ([]byte, error) { return tlsconfig.ParsePin(p) }

// Options are these settings for the TLS builder shared by the agent and
// pipeopsctl doctor (tlsconfig.New).
func (t TLS) Options() tlsconfig.Options {
	return tlsconfig.Options{CAFile: t.CAFile, CertFile: t.CertFile, KeyFile: t.KeyFile, PinSHA256: t.PinSHA256,
		InsecureSkipVerify: t.InsecureSkipVerify}
}

// SecurityWarning is a setting that weakens the agent's defences: logged at
// Warn when the agent starts and reported as WARN by pipeopsctl doctor.
type SecurityWarning struct {
	Field   string // the key, e.g. pipeops.tls.insecure_skip_verify
	Message string // what it exposes
	Fix     string // what to do instead
}

// SecurityWarnings lists the settings that weaken the agent's defences.
func (c *Config) SecurityWarnings() []SecurityWarning {
	var w []SecurityWarning
	t := c.PipeOps.TLS
	switch {
	case t.InsecureSkipVerify && len(t.PinSHA256) == 0:
		w = append(w, SecurityWarning{"pipeops.tls.insecure_skip_verify",
			"certificate checks are OFF: anyone on the network path can pose as PipeOps and receive the install token and the cluster's credentials",
			"remove insecure_skip_verify; set pipeops.tls.ca_file (a private CA) or pipeops.tls.pin_sha256 instead"})
	case t.InsecureSkipVerify:
		w = append(w, SecurityWarning{"pipeops.tls.insecure_skip_verify",
			"certificate chain checks are OFF: only pipeops.tls.pin_sha256 (the server's own key) protects the link",
			"prefer pipeops.tls.ca_file with the pins, so a rotated key does not cut the agent off"})
	}
	if u, err := url.Parse(c.PipeOps.APIURL); err == nil && (u.Scheme == "http" || u.Scheme == "ws") {
		w = append(w, SecurityWarning{"pipeops.api_url",
			fmt.Sprintf("%s is plain text: the install token and every proxied request and response cross the network unencrypted", c.PipeOps.APIURL),
			"use an https:// URL"})
	}
	if b := c.Agent.BindAddress; b != "localhost" && !net.ParseIP(b).IsLoopback() {
		w = append(w, SecurityWarning{"agent.bind_address",
			fmt.Sprintf("%s is not a loopback address: /health, /ready, /version, /metrics and the dashboard answer anyone who can reach port %d, without authentication", b, c.Agent.Port),
			"bind to 127.0.0.1 and reach it through an SSH tunnel (ssh -L)"})
	}
	return w
}
