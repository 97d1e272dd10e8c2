package config

import (
	"errors"
	"flag"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite golden files")

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func load(t *testing.T, path string, e map[string]string) (*Config, []string, error) {
	t.Helper()
	var environ []string
	for k, v := range e {
		environ = append(environ, k+"="+v)
	}
	return Load(Options{Path: path, DropInDir: t.TempDir(), Getenv: env(e), Environ: func() []string { return environ },
		TokenFallback: filepath.Join(t.TempDir(), "absent")})
}

// TestLoadErrorsMatchGolden runs every bad file and compares the exact
// message a user sees with testdata/<name>.golden (-update rewrites them).
func TestLoadErrorsMatchGolden(t *testing.T) {
	files, _ := filepath.Glob("testdata/bad-*.yaml")
	if len(files) < 5 {
		t.Fatalf("found only %d bad fixtures", len(files))
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".yaml")
		t.Run(name, func(t *testing.T) {
			cfg, _, err := load(t, f, map[string]string{"PIPEOPS_TOKEN": "tok"})
			if err == nil {
				err = cfg.Validate()
			}
			if err == nil {
				t.Fatalf("Load(%q) succeeded; want an error", f)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %v does not wrap ErrInvalid (the daemon would not exit 2)", err)
			}
			got := err.Error() + "\n"
			golden := filepath.Join("testdata", name+".golden")
			if *update {
				os.WriteFile(golden, []byte(got), 0o644)
			}
			want, rerr := os.ReadFile(golden)
			if rerr != nil {
				t.Fatalf("missing golden file (run go test ./internal/config -update): %v", rerr)
			}
			if got != string(want) {
				t.Errorf("Load(%q) error =\n%s\nwant\n%s", f, got, want)
			}
		})
	}
}

func TestLoadBriefExample(t *testing.T) {
	cfg, warnings, err := load(t, "testdata/good-brief.yaml", map[string]string{"PIPEOPS_TOKEN": "s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("Validate() = %v", err)
	}
	if cfg.Agent.Name != "production-cluster" || len(cfg.Tunnel.Forwards) != 3 || cfg.PipeOps.Reconnect.Interval.Std() != 5*time.Second {
		t.Fatalf("decoded %+v", cfg)
	}
	if cfg.PipeOps.Token.Reveal() != "s3cret" {
		t.Fatal("token from ${PIPEOPS_TOKEN} not expanded")
	}
	if len(warnings) == 0 || !strings.Contains(strings.Join(warnings, "\n"), "in_cluster") {
		t.Fatalf("want a warning that in_cluster is ignored, got %v", warnings)
	}
}

func TestDefaultsWithoutAnyFile(t *testing.T) {
	cfg, _, err := Load(Options{Path: "", Getenv: env(map[string]string{"PIPEOPS_TOKEN": "t"}), Environ: func() []string { return nil }, DropInDir: t.TempDir(), TokenFallback: "/nonexistent"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.PipeOps.APIURL != "https://api.pipeops.io" || cfg.Agent.Name != "default-cluster" || cfg.Agent.Port != 8080 ||
		!cfg.Agent.EnableSSE || !cfg.Agent.EnableWebSocket || cfg.Logging.Level != "info" {
		t.Fatalf("defaults = %+v", cfg)
	}
}

func TestEnvironmentOverridesFiles(t *testing.T) {
	cfg, warnings, err := load(t, "testdata/good-brief.yaml", map[string]string{
		"PIPEOPS_TOKEN": "t", "PIPEOPS_API_URL": "http://127.0.0.1:9000", "PIPEOPS_CLUSTER_NAME": "c2",
		"PIPEOPS_AGENT_ID": "agent-x", "PIPEOPS_LOG_LEVEL": "debug", "PIPEOPS_PORT": "9090",
		"PIPEOPS_ENABLE_SSE": "false", "PIPEOPS_ENABLE_WEBSOCKET": "0", "PIPEOPS_TYPO": "1",
	})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.PipeOps.APIURL != "http://127.0.0.1:9000" || cfg.Agent.Name != "c2" || cfg.Agent.ID != "agent-x" ||
		cfg.Logging.Level != "debug" || cfg.Agent.Port != 9090 || cfg.Agent.EnableSSE || cfg.Agent.EnableWebSocket {
		t.Fatalf("env not applied: %+v", cfg.Agent)
	}
	if !strings.Contains(strings.Join(warnings, "\n"), "PIPEOPS_TYPO") {
		t.Fatalf("want a warning about PIPEOPS_TYPO, got %v", warnings)
	}
}

func TestBadEnvironmentValueNamesTheVariable(t *testing.T) {
	cfg, _, err := load(t, "testdata/good-brief.yaml", map[string]string{"PIPEOPS_TOKEN": "t", "PIPEOPS_PORT": "eighty"})
	if err != nil {
		t.Fatal(err)
	}
	err = cfg.Validate()
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != "environment PIPEOPS_PORT" {
		t.Fatalf("Validate() = %v; want a FieldError for PIPEOPS_PORT", err)
	}
}

func TestTokenSourcesInOrder(t *testing.T) {
	dir := t.TempDir()
	write := func(name, v string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(v+"\n"), 0o600)
		return p
	}
	fileTok := write("file", "from-file")
	credDir := filepath.Join(dir, "creds")
	os.Mkdir(credDir, 0o700)
	os.WriteFile(filepath.Join(credDir, "token"), []byte("from-cred"), 0o600)
	fallback := write("fallback", "from-fallback")
	cases := []struct {
		name string
		env  map[string]string
		want string
	}{
		{"env wins", map[string]string{"PIPEOPS_TOKEN": "from-env", "PIPEOPS_TOKEN_FILE": fileTok, "CREDENTIALS_DIRECTORY": credDir}, "from-env"},
		{"token file", map[string]string{"PIPEOPS_TOKEN_FILE": fileTok, "CREDENTIALS_DIRECTORY": credDir}, "from-file"},
		{"systemd credential", map[string]string{"CREDENTIALS_DIRECTORY": credDir}, "from-cred"},
		{"fallback file", map[string]string{}, "from-fallback"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg, _, err := Load(Options{Path: "testdata/comments-only.yaml", DropInDir: t.TempDir(), Getenv: env(tc.env), Environ: func() []string { return nil }, TokenFallback: fallback})
			if err != nil {
				t.Fatal(err)
			}
			if got := cfg.PipeOps.Token.Reveal(); got != tc.want {
				t.Fatalf("token = %q; want %q (source %s)", got, tc.want, cfg.TokenSource)
			}
		})
	}
	_, _, err := Load(Options{Path: "testdata/comments-only.yaml", DropInDir: t.TempDir(), Getenv: env(map[string]string{"PIPEOPS_TOKEN_FILE": "/nonexistent/tok"}), Environ: func() []string { return nil }})
	var fe *FieldError
	if !errors.As(err, &fe) || !strings.Contains(err.Error(), "/nonexistent/tok") {
		t.Fatalf("missing named token file: %v; want a FieldError naming the path", err)
	}
}

func TestDropInsApplyInLexicalOrder(t *testing.T) {
	dir := t.TempDir()
	main := filepath.Join(dir, "agent.yaml")
	os.WriteFile(main, []byte("version: 1\nagent:\n  name: base\n  port: 1000\n"), 0o644)
	os.Mkdir(filepath.Join(dir, "agent.d"), 0o755)
	os.WriteFile(filepath.Join(dir, "agent.d", "20-b.yaml"), []byte("version: 1\nagent:\n  name: second\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "agent.d", "10-a.yaml"), []byte("version: 1\nagent:\n  name: first\n  port: 2000\n"), 0o644)
	cfg, _, err := Load(Options{Path: main, Getenv: env(map[string]string{"PIPEOPS_TOKEN": "t"}), Environ: func() []string { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Agent.Name != "second" || cfg.Agent.Port != 2000 || len(cfg.Sources) != 3 {
		t.Fatalf("got name=%s port=%d sources=%v", cfg.Agent.Name, cfg.Agent.Port, cfg.Sources)
	}
}

func TestExplicitMissingFileIsAnError(t *testing.T) {
	_, _, err := load(t, "/nonexistent/agent.yaml", map[string]string{"PIPEOPS_TOKEN": "t"})
	if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "/nonexistent/agent.yaml") {
		t.Fatalf("Load = %v; want an ErrInvalid naming the file", err)
	}
}

func TestSecretNeverPrints(t *testing.T) {
	s := Secret("hunter2")
	for _, out := range []string{s.String(), s.LogValue().String()} {
		if strings.Contains(out, "hunter2") {
			t.Fatalf("secret leaked: %q", out)
		}
	}
	b, _ := s.MarshalJSON()
	if strings.Contains(string(b), "hunter2") {
		t.Fatalf("secret leaked in JSON: %s", b)
	}
}

func TestParsePinAcceptsBase64AndHex(t *testing.T) {
	hexPin := strings.Repeat("ab", 32)
	if _, err := ParsePin(hexPin); err != nil {
		t.Errorf("hex pin: %v", err)
	}
	if _, err := ParsePin("sha256//47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="); err != nil {
		t.Errorf("base64 pin: %v", err)
	}
	if _, err := ParsePin("short"); err == nil {
		t.Error("short pin accepted")
	}
}

func TestAllowedTargetCIDRsAcceptCIDRsAndSingleAddresses(t *testing.T) {
	c := Default()
	c.Security.AllowedTargetCIDRs = []string{"10.0.0.0/8", "127.0.0.1", " fd00::1 ", "192.168.1.7/24"}
	got := c.Security.AllowedTargets()
	want := []string{"10.0.0.0/8", "127.0.0.1/32", "fd00::1/128", "192.168.1.0/24"}
	if len(got) != len(want) {
		t.Fatalf("AllowedTargets() = %v; want %v", got, want)
	}
	for i := range want {
		if got[i].String() != want[i] {
			t.Fatalf("AllowedTargets() = %v; want %v", got, want)
		}
	}
}

// FuzzLoad feeds arbitrary bytes to the config loader as a drop-in file: it
// must never panic; a file it refuses fails with ErrInvalid (the agent
// exits 2); one it accepts validates to nil or to FieldErrors, each naming
// a field; and secrets never appear in an error.
// Corpus: testdata/fuzz/FuzzLoad. CI runs it by count (scripts/test.sh).
func FuzzLoad(f *testing.F) {
	for _, name := range []string{"good-brief.yaml", "bad-fields.yaml", "bad-security.yaml", "bad-duplicate.yaml", "bad-type.yaml", "comments-only.yaml"} {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("version: 1\nsecurity:\n  allowed_target_cidrs: [\"::ffff:10.0.0.0/104\", 127.0.0.1]\nproxy: {memory_budget_bytes: 1048576}\n"))
	f.Add([]byte("version: 1\npipeops:\n  token: s3cret-token-value\n  api_url: \"ht tp://x\"\n"))
	f.Add([]byte("version: 1\n---\nversion: 1\n"))
	f.Add([]byte("version: 1\nagent: &a {name: x}\nkubernetes: *a\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		dir := t.TempDir()
		main := filepath.Join(dir, "agent.yaml")
		if err := os.WriteFile(main, []byte("version: 1\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		dropins := filepath.Join(dir, "agent.d")
		if err := os.Mkdir(dropins, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dropins, "10-fuzz.yaml"), b, 0o600); err != nil {
			t.Fatal(err)
		}
		e := map[string]string{"PIPEOPS_TOKEN": "fuzz-token"}
		cfg, _, err := Load(Options{Path: main, DropInDir: dropins, Getenv: env(e), Environ: func() []string { return nil },
			TokenFallback: filepath.Join(dir, "absent")})
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Load error %v does not wrap ErrInvalid", err)
			}
			return
		}
		verr := cfg.Validate()
		if verr == nil {
			_ = cfg.Security.AllowedTargets()
			return
		}
		if !errors.Is(verr, ErrInvalid) {
			t.Fatalf("Validate error %v does not wrap ErrInvalid", verr)
		}
		if strings.Contains(verr.Error(), "s3cret-token-value") || strings.Contains(verr.Error(), "fuzz-token") {
			t.Fatalf("a secret appears in %v", verr)
		}
	})
}

func TestSecurityWarningsNameEachWeakenedDefence(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(c *Config)
		want []string
	}{
		{"the defaults are quiet", func(*Config) {}, nil},
		{"insecure_skip_verify", func(c *Config) { c.PipeOps.TLS.InsecureSkipVerify = true }, []string{"pipeops.tls.insecure_skip_verify"}},
		{"pin-only trust", func(c *Config) {
			c.PipeOps.TLS.InsecureSkipVerify, c.PipeOps.TLS.PinSHA256 = true, []string{strings.Repeat("ab", 32)}
		}, []string{"pipeops.tls.insecure_skip_verify"}},
		{"an http api_url", func(c *Config) { c.PipeOps.APIURL = "http://cp.example.com" }, []string{"pipeops.api_url"}},
		{"a ws api_url", func(c *Config) { c.PipeOps.APIURL = "ws://cp.example.com" }, []string{"pipeops.api_url"}},
		{"a wildcard bind", func(c *Config) { c.Agent.BindAddress = "0.0.0.0" }, []string{"agent.bind_address"}},
		{"a LAN bind", func(c *Config) { c.Agent.BindAddress = "10.1.2.3" }, []string{"agent.bind_address"}},
		{"localhost and ::1 are loopback", func(c *Config) { c.Agent.BindAddress = "::1" }, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Default()
			tc.mod(c)
			var got []string
			for _, w := range c.SecurityWarnings() {
				got = append(got, w.Field)
				if w.Message == "" || w.Fix == "" {
					t.Errorf("warning %+v lacks a message or a fix", w)
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("SecurityWarnings() = %q; want %q", got, tc.want)
			}
		})
	}
}

func TestParseLevel(t *testing.T) {
	for in, want := range map[string]slog.Level{"debug": slog.LevelDebug, "INFO": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError} {
		if got, err := ParseLevel(in); err != nil || got != want {
			t.Errorf("ParseLevel(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := ParseLevel("loud"); err == nil {
		t.Error("ParseLevel(loud) succeeded; want an error")
	}
}

func TestHALeaseSettingsWhereALeaderCouldNotStepDownInTimeAreRejected(t *testing.T) {
	for _, tc := range []struct {
		name, field string
		ha          HA
	}{
		{"renew deadline equal to the lease", "ha.renew_deadline", HA{Enabled: true, LeaseDuration: D(10 * time.Second), RenewDeadline: D(10 * time.Second)}},
		{"lease in fractions of a second", "ha.lease_duration", HA{Enabled: true, LeaseDuration: D(1500 * time.Millisecond)}},
		{"retry period too close to the renew deadline", "ha.retry_period", HA{Enabled: true, RetryPeriod: D(6 * time.Second)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Default()
			c.PipeOps.Token = "t"
			c.HA = tc.ha
			err := c.Validate()
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != tc.field {
				t.Fatalf("Validate() = %v; want a FieldError on %s", err, tc.field)
			}
		})
	}
	c := Default()
	c.PipeOps.Token = "t"
	c.HA.Enabled = true
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate() with the default lease settings = %v", err)
	}
	if l, r, p := c.HA.Lease(); l != 10*time.Second || r != 7*time.Second || p != time.Second {
		t.Fatalf("HA.Lease() = %s, %s, %s; want 10s, 7s, 1s", l, r, p)
	}
}
