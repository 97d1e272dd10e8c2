package main

import (
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/pipeops/pipeops-vm-agent/daemon"
	ctl "github.com/pipeops/pipeops-vm-agent/internal/cli"
	"github.com/pipeops/pipeops-vm-agent/internal/config"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

// overstrike is nroff's bold and underline for a non-terminal ("x\bx").
var overstrike = regexp.MustCompile(".\b")

func gunzip(t *testing.T, p string) []byte {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("%s: %v", p, err)
	}
	if zr.Name != "" || !zr.ModTime.IsZero() {
		t.Errorf("%s carries a name %q or time %v; want gzip -n output (reproducible)", p, zr.Name, zr.ModTime)
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestManPagesAreCleanAndDescribeEveryCommand renders both pages as lintian
// does (man --warnings, lexgrog for the whatis line) and checks that they
// follow the command definitions.
func TestManPagesAreCleanAndDescribeEveryCommand(t *testing.T) {
	man := testbin.NeedTool(t, "man", "man-db")
	lexgrog := testbin.NeedTool(t, "lexgrog", "man-db")
	out := t.TempDir()
	if err := generate(out); err != nil {
		t.Fatal(err)
	}
	pages := map[string][]string{
		"pipeopsctl.1":    {"status", "logs", "doctor", "monitoring uninstall", "completion", "--socket", "EXIT STATUS", "pipeops-agent(8)"},
		"pipeops-agent.8": {"run", "--config FILE", "version", "/etc/pipeops/agent.d/*.yaml", "RestartPreventExitStatus=2", "pipeopsctl(1)"},
	}
	for _, c := range ctl.App().Commands {
		pages["pipeopsctl.1"] = append(pages["pipeopsctl.1"], c.Name)
	}
	for _, c := range daemon.Commands {
		pages["pipeops-agent.8"] = append(pages["pipeops-agent.8"], c.Name, c.Usage)
	}
	for _, v := range config.EnvVars {
		pages["pipeops-agent.8"] = append(pages["pipeops-agent.8"], v.Name)
	}
	for page, wants := range pages {
		src := filepath.Join(out, page)
		if err := os.WriteFile(src, gunzip(t, filepath.Join(out, "man", page+".gz")), 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(man, "--warnings", "-E", "UTF-8", "-l", src)
		cmd.Env = append(os.Environ(), "MANWIDTH=200", "MAN_KEEP_FORMATTING=0")
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil || stderr.Len() > 0 {
			t.Errorf("man --warnings %s: %v\n%s", page, err, stderr.String())
		}
		text := overstrike.ReplaceAllString(stdout.String(), "")
		for _, w := range wants {
			if !strings.Contains(text, w) {
				t.Errorf("%s does not mention %q", page, w)
			}
		}
		whatis, err := exec.Command(lexgrog, src).CombinedOutput()
		name := strings.Split(page, ".")[0]
		if err != nil || !strings.Contains(string(whatis), `"`+name+` - `) {
			t.Errorf("lexgrog %s = %q, %v; want a whatis entry for %s", page, whatis, err, name)
		}
	}
}

func TestCompletionFilesAreWhatPipeopsctlPrints(t *testing.T) {
	out := t.TempDir()
	if err := generate(out); err != nil {
		t.Fatal(err)
	}
	for shell, file := range map[string]string{"bash": "pipeopsctl", "zsh": "_pipeopsctl", "fish": "pipeopsctl.fish"} {
		want, err := ctl.CompletionScript(shell)
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(out, "completions", file))
		if err != nil || string(got) != want {
			t.Errorf("completions/%s differs from \"pipeopsctl completion %s\" (%v)", file, shell, err)
		}
	}
}
