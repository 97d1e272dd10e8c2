package cli

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestLogsExecsJournalctlWithMappedFlags(t *testing.T) {
	base := []string{"journalctl", "-u", "pipeops-agent.service", "--no-pager"}
	cases := []struct {
		name string
		args []string
		want []string
	}{
		{"no flags shows the last 100 lines", nil, append(base, "-o", "cat", "-n", "100")},
		{"follow with a line count", []string{"-f", "-n", "20"}, append(base, "-o", "cat", "-n", "20", "-f")},
		{"since replaces the default count", []string{"--since", "10 min ago"}, append(base, "-o", "cat", "--since", "10 min ago")},
		{"json keeps the journal fields", []string{"--json", "-n", "5"}, append(base, "-o", "json", "-n", "5")},
		{"priority and boot", []string{"-p", "warning", "-b"}, append(base, "-o", "cat", "-n", "100", "-p", "warning", "-b")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e, _, errb := testEnv(t, nil, "", nil)
			e.lookPath = func(string) (string, error) { return "/usr/bin/journalctl", nil }
			var gotArgv0 string
			var gotArgv []string
			e.execve = func(argv0 string, argv, _ []string) error { gotArgv0, gotArgv = argv0, argv; return nil }
			if code := run(context.Background(), e, append([]string{"pipeopsctl", "logs"}, tc.args...)); code != ExitOK {
				t.Fatalf("exit %d: %s", code, errb)
			}
			if gotArgv0 != "/usr/bin/journalctl" || !slices.Equal(gotArgv, tc.want) {
				t.Errorf("exec %s %q; want %q", gotArgv0, gotArgv, tc.want)
			}
		})
	}
}

func TestLogsWithoutJournalctlSaysWhy(t *testing.T) {
	e, _, errb := testEnv(t, nil, "", nil)
	e.lookPath = func(string) (string, error) { return "", errors.New("not found") }
	e.execve = func(string, []string, []string) error { t.Fatal("exec without journalctl"); return nil }
	if code := run(context.Background(), e, []string{"pipeopsctl", "logs"}); code != ExitError {
		t.Fatalf("exit %d; want 1", code)
	}
	if !strings.Contains(errb.String(), "journalctl not found") || !strings.Contains(errb.String(), "systemd journal") {
		t.Errorf("stderr = %q", errb)
	}
}
