package cli

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/pipeops/pipeops-vm-agent/internal/paths"
	"github.com/pipeops/pipeops-vm-agent/systemd"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

// pathSystemctl puts a stub systemctl first on PATH (the installer runs the
// real binary by name) and returns its calls, each with spaces as "_".
func pathSystemctl(t *testing.T) func() []string {
	s := testbin.StubSystemctl(t)
	return func() []string {
		return strings.Fields(strings.ReplaceAll(strings.Join(s.Calls(), "\n"), " ", "_"))
	}
}

func TestInstallReadsTheTokenFromAFileAndIsIdempotent(t *testing.T) {
	calls := pathSystemctl(t)
	root := t.TempDir()
	tokFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokFile, []byte("  tok-from-file\n"), 0o600)
	args := []string{"pipeopsctl", "install", "--root", root, "--token-file", tokFile, "--api-url", "https://cp.example.com", "--cluster-name", "edge"}

	e, out, errb := testEnv(t, nil, "", nil)
	if code := run(context.Background(), e, args); code != ExitOK {
		t.Fatalf("exit %d: %s", code, errb)
	}
	golden(t, "install-first", out.String())
	if b, _ := os.ReadFile(filepath.Join(root, paths.TokenFile)); string(b) != "tok-from-file\n" {
		t.Errorf("token file = %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(root, paths.LocalUnit)); string(b) != systemd.Unit {
		t.Error("the installed unit differs from the embedded one")
	}
	calls()

	e, out, _ = testEnv(t, nil, "", nil)
	if code := run(context.Background(), e, args); code != ExitOK {
		t.Fatalf("second install: exit %d", code)
	}
	golden(t, "install-again", out.String())
	if got := calls(); !slices.Equal(got, []string{"is-active_pipeops-agent.service"}) {
		t.Errorf("second install ran systemctl %q; want only is-active", got)
	}
}

func TestInstallTakesTheTokenFromStdinAndKeepsItOnReinstall(t *testing.T) {
	pathSystemctl(t)
	root := t.TempDir()
	e, _, errb := testEnv(t, nil, "", nil)
	e.stdin = strings.NewReader("tok-stdin\n")
	if code := run(context.Background(), e, []string{"pipeopsctl", "install", "--root", root}); code != ExitOK {
		t.Fatalf("exit %d: %s", code, errb)
	}
	if b, _ := os.ReadFile(filepath.Join(root, paths.TokenFile)); string(b) != "tok-stdin\n" {
		t.Fatalf("token file = %q; want the token from stdin", b)
	}
	e, _, errb = testEnv(t, nil, "", nil)
	e.stdin = strings.NewReader("")
	if code := run(context.Background(), e, []string{"pipeopsctl", "install", "--root", root, "--cluster-name", "b"}); code != ExitOK {
		t.Fatalf("reinstall without a token: exit %d: %s", code, errb)
	}
	if b, _ := os.ReadFile(filepath.Join(root, paths.TokenFile)); string(b) != "tok-stdin\n" {
		t.Fatalf("token file = %q after a reinstall without a token; want it kept", b)
	}
}

func TestInstallRefusesATokenOnTheCommandLine(t *testing.T) {
	e, _, errb := testEnv(t, nil, "", nil)
	if code := run(context.Background(), e, []string{"pipeopsctl", "install", "--root", t.TempDir(), "--token", "secret"}); code != ExitUsage {
		t.Fatalf("exit %d; want %d (usage)", code, ExitUsage)
	}
	if !strings.Contains(errb.String(), "flag provided but not defined") {
		t.Errorf("stderr = %q", errb)
	}
}

func TestInstallWithoutAnyTokenSaysHowToPassOne(t *testing.T) {
	pathSystemctl(t)
	e, _, errb := testEnv(t, nil, "", nil)
	if code := run(context.Background(), e, []string{"pipeopsctl", "install", "--root", t.TempDir()}); code != ExitError {
		t.Fatalf("exit %d; want 1", code)
	}
	if !strings.Contains(errb.String(), "--token-file") {
		t.Errorf("stderr = %q; want a --token-file hint", errb)
	}
}

func TestUninstallAndServiceCommandsDriveSystemctl(t *testing.T) {
	calls := pathSystemctl(t)
	root := t.TempDir()
	e, _, _ := testEnv(t, nil, "", nil)
	e.stdin = strings.NewReader("tok\n")
	if code := run(context.Background(), e, []string{"pipeopsctl", "install", "--root", root}); code != ExitOK {
		t.Fatal("install failed")
	}
	calls()
	// The agent binary of the install: --purge runs "pipeops-agent remove-identity".
	agentArgv := filepath.Join(t.TempDir(), "argv")
	fake := "#!/bin/sh\necho \"$*\" > " + agentArgv + "\necho removed serviceaccount pipeops-system/pipeops-agent\n"
	if err := os.WriteFile(filepath.Join(root, paths.AgentBinary), []byte(fake), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"stop"}, []string{"stop_pipeops-agent.service"}},
		{[]string{"start"}, []string{"start_pipeops-agent.service"}},
		{[]string{"restart"}, []string{"restart_pipeops-agent.service"}},
		// Stopped first (a running agent would mint a new token), then remove-identity, then the rest.
		{[]string{"uninstall", "--purge"}, []string{"is-active_pipeops-agent.service", "stop_pipeops-agent.service",
			"is-active_pipeops-agent.service", "disable_pipeops-agent.service", "daemon-reload"}},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			e, out, errb := testEnv(t, nil, "", nil)
			if code := run(context.Background(), e, append(append([]string{"pipeopsctl"}, tc.args...), "--root", root)); code != ExitOK {
				t.Fatalf("exit %d: %s", code, errb)
			}
			if got := calls(); !slices.Equal(got, tc.want) {
				t.Errorf("systemctl calls = %q; want %q\n%s", got, tc.want, out)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(root, paths.ConfigDir)); err == nil {
		t.Error("uninstall --purge left /etc/pipeops behind")
	}
	if b, err := os.ReadFile(agentArgv); err != nil || strings.TrimSpace(string(b)) != "remove-identity --config "+filepath.Join(root, paths.ConfigFile) {
		t.Errorf("pipeops-agent ran with %q (%v); want remove-identity with the install's config", b, err)
	}
}
