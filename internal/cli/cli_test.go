package cli

import (
	"path/filepath"
	"strings"
	"testing"
)

// A command line urfave/cli rejects exits 2 whatever the mistake, and a
// command that ran and failed exits 1 whatever its message says: the exit
// code follows where the error came from, not its text.
func TestCommandLineMistakesExitTwoAndCommandFailuresOne(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "Required flag", "agent.yaml") // a name the old string match took for usage
	cases := []struct {
		name string
		args []string
		code int
		say  string
	}{
		{"unknown global flag", []string{"--nosuch"}, ExitUsage, "flag provided but not defined: -nosuch"},
		{"unknown command flag", []string{"status", "--nosuch"}, ExitUsage, "flag provided but not defined"},
		{"unknown subcommand flag", []string{"monitoring", "status", "--nosuch"}, ExitUsage, "flag provided but not defined"},
		{"flag of the help command", []string{"help", "--nosuch"}, ExitUsage, "flag provided but not defined"},
		{"bad number", []string{"logs", "-n", "many"}, ExitUsage, `invalid value "many" for flag -n`},
		{"flag without its value", []string{"logs", "-n"}, ExitUsage, "flag needs an argument: -n"},
		{"bad boolean", []string{"status", "--json=maybe"}, ExitUsage, `invalid boolean value "maybe"`},
		{"unknown command", []string{"nosuch"}, ExitUsage, "No help topic for 'nosuch'"},
		{"unknown subcommand", []string{"config", "nosuch"}, ExitUsage, "No help topic for 'nosuch'"},
		{"unknown help topic", []string{"help", "nosuch"}, ExitUsage, "No help topic for 'nosuch'"},
		{"a command's own usage check", []string{"completion", "tcsh"}, ExitUsage, "want bash, zsh or fish"},
		{"a command that fails", []string{"config", "show", "--config", missing}, ExitError, "Required flag"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e, _, errb := testEnv(t, nil, "", nil)
			if code := run(t.Context(), e, append([]string{"pipeopsctl"}, tc.args...)); code != tc.code {
				t.Errorf("pipeopsctl %s exit %d; want %d (stderr %q)", strings.Join(tc.args, " "), code, tc.code, errb)
			}
			if !strings.Contains(errb.String(), tc.say) {
				t.Errorf("stderr = %q; want it to say %q", errb, tc.say)
			}
		})
	}
}
