package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/pipeops/pipeops-vm-agent/internal/paths"
)

// Options tell Load where to look. The zero value reads the host's files and
// the process environment.
type Options struct {
	// Path is the main file. Empty means $PIPEOPS_CONFIG, else /etc/pipeops/agent.yaml.
	// A path given explicitly must exist; the default one may be absent.
	Path string
	// DropInDir is read after Path. Empty means "agent.d" beside Path.
	DropInDir string
	// Getenv reads the environment (tests inject a map).
	Getenv func(string) string
	// Environ lists the environment, to warn about unknown PIPEOPS_* names.
	Environ func() []string
	// TokenFallback is the last place the token is looked for
	// (default /etc/pipeops/token).
	TokenFallback string
	// Decrypt, when set, reads the encrypted systemd credential at
	// EncryptedToken (default /etc/credstore.encrypted/pipeops-agent.token)
	// before TokenFallback. The agent under systemd never needs it (systemd
	// decrypts into $CREDENTIALS_DIRECTORY); pipeopsctl does.
	Decrypt        func(path string) ([]byte, error)
	EncryptedToken string
}

// Load reads every layer and returns the merged configuration plus warnings
// (unknown PIPEOPS_* variables, keys accepted only for compatibility). It
// does not call Validate.
func Load(o Options) (*Config, []string, error) {
	if o.Getenv == nil {
		o.Getenv = os.Getenv
	}
	if o.Environ == nil {
		o.Environ = os.Environ
	}
	explicit := o.Path != ""
	if !explicit {
		if p := o.Getenv("PIPEOPS_CONFIG"); p != "" {
			o.Path, explicit = p, true
		} else {
			o.Path = paths.ConfigFile
		}
	}
	if o.DropInDir == "" {
		o.DropInDir = filepath.Join(filepath.Dir(o.Path), "agent.d")
	}
	if o.TokenFallback == "" {
		o.TokenFallback = paths.TokenFile
	}
	if o.EncryptedToken == "" {
		o.EncryptedToken = paths.EncryptedTokenFile
	}

	cfg := Default()
	files := []string{o.Path}
	dropins, _ := filepath.Glob(filepath.Join(o.DropInDir, "*.yaml"))
	sort.Strings(dropins)
	files = append(files, dropins...)
	for i, f := range files {
		b, err := os.ReadFile(f)
		if errors.Is(err, os.ErrNotExist) && i == 0 && !explicit {
			continue
		}
		if err != nil {
			return nil, nil, fmt.Errorf("%w: read %s: %w", ErrInvalid, f, err)
		}
		if err := decodeFile(f, b, cfg); err != nil {
			return nil, nil, err
		}
		if !isBlank(b) {
			cfg.Sources = append(cfg.Sources, f)
		}
	}
	warnings := applyEnv(cfg, o.Getenv, o.Environ())
	if err := resolveToken(cfg, o); err != nil {
		return nil, nil, err
	}
	warnings = append(warnings, compatWarnings(cfg)...)
	return cfg, warnings, nil
}

// isBlank reports whether a YAML file has nothing but comments and space.
func isBlank(b []byte) bool {
	for _, line := range bytes.Split(b, []byte("\n")) {
		l := bytes.TrimSpace(line)
		if len(l) > 0 && l[0] != '#' && !bytes.Equal(l, []byte("---")) {
			return false
		}
	}
	return true
}

var (
	reUnknown = regexp.MustCompile(`line (\d+): field (\S+) not found in type config\.(\w+)`)
	sections  = map[string]string{
		"Config": "top level", "Agent": "agent", "PipeOps": "pipeops", "Reconnect": "pipeops.reconnect",
		"TLS": "pipeops.tls", "Kubernetes": "kubernetes", "Logging": "logging", "Tunnel": "tunnel",
		"Forward": "tunnel.forwards[]", "Proxy": "proxy", "Gateway": "gateway", "Monitoring": "monitoring",
		"MonitoringComponents": "monitoring.components", "MonitoringComponent": "monitoring.components.<name>",
		"Security": "security",
	}
)

// decodeFile merges one YAML file into cfg. Unknown and duplicate keys fail.
func decodeFile(name string, b []byte, cfg *Config) error {
	if isBlank(b) {
		return nil
	}
	var probe struct {
		Version *int `yaml:"version"`
	}
	// A first lenient pass only to check the version key before strict decoding.
	if err := yaml.Unmarshal(b, &probe); err == nil {
		switch {
		case probe.Version == nil:
			return fmt.Errorf("%w: %s: missing \"version: 1\" (every config file starts with it)", ErrInvalid, name)
		case *probe.Version != 1:
			return fmt.Errorf("%w: %s: unsupported version %d (this agent reads version 1)", ErrInvalid, name, *probe.Version)
		}
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(cfg); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: %s: %s", ErrInvalid, name, yamlMessage(err))
	}
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: %s: more than one YAML document (use agent.d/*.yaml for extra layers)", ErrInvalid, name)
	}
	return nil
}

// yamlMessage rewrites yaml.v3's messages into "line N: unknown field "x" in section".
func yamlMessage(err error) string {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return strings.TrimPrefix(err.Error(), "yaml: ")
	}
	msgs := make([]string, 0, len(te.Errors))
	for _, e := range te.Errors {
		if m := reUnknown.FindStringSubmatch(e); m != nil {
			sec := sections[m[3]]
			if sec == "" {
				sec = m[3]
			}
			e = fmt.Sprintf("line %s: unknown field %q in %s", m[1], m[2], sec)
		}
		msgs = append(msgs, e)
	}
	return strings.Join(msgs, "; ")
}

// resolveToken picks the token: PIPEOPS_TOKEN, then pipeops.token (with
// ${VAR} expansion, as in the brief's example), then PIPEOPS_TOKEN_FILE or
// pipeops.token_file, then the systemd credential, then (with o.Decrypt) the
// encrypted credential on disk, then /etc/pipeops/token.
func resolveToken(cfg *Config, o Options) error {
	if v := o.Getenv("PIPEOPS_TOKEN"); v != "" {
		cfg.PipeOps.Token, cfg.TokenSource = Secret(strings.TrimSpace(v)), "environment PIPEOPS_TOKEN"
		return nil
	}
	if t := cfg.PipeOps.Token.Reveal(); t != "" {
		expanded := os.Expand(t, o.Getenv)
		cfg.PipeOps.Token, cfg.TokenSource = Secret(strings.TrimSpace(expanded)), "config pipeops.token"
		if expanded != "" {
			return nil
		}
	}
	type src struct {
		path, label string
		encrypted   bool
	}
	var cands []src
	if f := o.Getenv("PIPEOPS_TOKEN_FILE"); f != "" {
		cands = append(cands, src{path: f, label: "PIPEOPS_TOKEN_FILE " + f})
	}
	if f := cfg.PipeOps.TokenFile; f != "" {
		cands = append(cands, src{path: f, label: "pipeops.token_file " + f})
	}
	explicit := len(cands)
	if d := o.Getenv("CREDENTIALS_DIRECTORY"); d != "" {
		cands = append(cands, src{path: filepath.Join(d, "token"), label: "systemd credential token"})
	}
	if o.Decrypt != nil {
		if _, err := os.Stat(o.EncryptedToken); err == nil {
			cands = append(cands, src{o.EncryptedToken, "encrypted systemd credential " + o.EncryptedToken, true})
		}
	}
	cands = append(cands, src{path: o.TokenFallback, label: o.TokenFallback})
	for i, c := range cands {
		read := os.ReadFile
		if c.encrypted {
			read = o.Decrypt
		}
		b, err := read(c.path) // an encrypted credential this user cannot decrypt is skipped like an unreadable file
		if err != nil {
			if i < explicit { // a file the user named must be readable
				return &FieldError{Field: "pipeops.token_file", Value: c.path, Err: fmt.Errorf("cannot read token file: %w", errors.Unwrap(err))}
			}
			continue
		}
		if t := strings.TrimSpace(string(b)); t != "" {
			cfg.PipeOps.Token, cfg.TokenSource = Secret(t), c.label
			return nil
		}
	}
	return nil
}

// compatWarnings names keys the brief's example carries that have no effect
// in host mode, so nobody believes they did something.
func compatWarnings(c *Config) []string {
	var w []string
	if c.Kubernetes.InCluster {
		w = append(w, "kubernetes.in_cluster is ignored: the host agent always uses a kubeconfig")
	}
	if !c.PipeOps.Reconnect.Enabled || c.PipeOps.Reconnect.MaxAttempts != 0 {
		w = append(w, "pipeops.reconnect.enabled and max_attempts are ignored: the agent reconnects forever (protocol.md §8.4)")
	}
	if !c.PipeOps.TLS.Enabled {
		w = append(w, "pipeops.tls.enabled is ignored: the api_url scheme decides whether TLS is used")
	}
	if c.Tunnel.PollInterval != Default().Tunnel.PollInterval {
		w = append(w, "tunnel.poll_interval is ignored: streams are pushed by the gateway, nothing polls")
	}
	return w
}
