package daemon

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestMainParsesItsTwoCommands(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(bad, []byte("version: 1\nagnet: {}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args           []string
		code           int
		stdout, stderr string
	}{
		{[]string{"version"}, ExitOK, "pipeops-agent ", ""},
		{[]string{"--help"}, ExitOK, "pipeops-agent run [--config FILE]", ""},
		{nil, ExitConfig, "", "Usage:"},
		{[]string{"start"}, ExitConfig, "", `unknown command "start"`},
		{[]string{"run", "--confg", "x"}, ExitConfig, "", "flag provided but not defined: -confg"},
		{[]string{"run", "extra"}, ExitConfig, "", `unexpected argument "extra"`},
		// The flag reaches config loading: the misspelt key is named with its line.
		{[]string{"run", "--config", bad}, ExitConfig, "", "agnet"},
	} {
		var out, errOut bytes.Buffer
		code := Main(append([]string{"pipeops-agent"}, tc.args...), &out, &errOut)
		if code != tc.code || !strings.Contains(out.String(), tc.stdout) || !strings.Contains(errOut.String(), tc.stderr) {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit %d, stdout with %q, stderr with %q",
				tc.args, code, out.String(), errOut.String(), tc.code, tc.stdout, tc.stderr)
		}
	}
}
