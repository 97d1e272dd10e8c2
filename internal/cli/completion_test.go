package cli

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

func TestHelpListsCommandsInOperatorOrder(t *testing.T) {
	e, out, _ := testEnv(t, nil, "", nil)
	if code := run(t.Context(), e, []string{"pipeopsctl", "--help"}); code != ExitOK {
		t.Fatalf("pipeopsctl --help exit %d", code)
	}
	var listed []string
	inCommands := false
	for _, line := range strings.Split(out.String(), "\n") {
		switch {
		case line == "COMMANDS:":
			inCommands = true
		case inCommands && strings.HasPrefix(line, "   "):
			listed = append(listed, strings.TrimSuffix(strings.Fields(line)[0], ","))
		case inCommands:
			inCommands = false
		}
	}
	if len(listed) < 3 || !slices.Equal(listed[:3], []string{"status", "logs", "doctor"}) {
		t.Fatalf("--help lists %v first; want status, logs, doctor", listed)
	}
	var names []string
	for _, c := range commands(e) {
		names = append(names, c.Name)
	}
	if !slices.Equal(listed[:len(listed)-1], names) {
		t.Errorf("--help lists %v; want the order of commands(): %v", listed, names)
	}
	if got := listed[len(listed)-1]; got != "help" {
		t.Errorf("--help lists %q last; want help", got)
	}
}

func TestCompletionRejectsUnknownShells(t *testing.T) {
	e, _, errb := testEnv(t, nil, "", nil)
	if code := run(t.Context(), e, []string{"pipeopsctl", "completion", "tcsh"}); code != ExitUsage {
		t.Fatalf("completion tcsh exit %d; want %d (usage)", code, ExitUsage)
	}
	if !strings.Contains(errb.String(), "want bash, zsh or fish") {
		t.Errorf("stderr = %q; want it to name the shells", errb.String())
	}
	if code := run(t.Context(), e, []string{"pipeopsctl", "completion"}); code != ExitUsage {
		t.Fatalf("completion without a shell exit %d; want %d (usage)", code, ExitUsage)
	}
}

// completionBin is a directory holding the real pipeopsctl, first on PATH
// for the shells, and the completion script of shell written to a file.
func completionBin(t *testing.T, shell string) (path, script string) {
	t.Helper()
	bin := testbin.Build(t, "pipeopsctl")
	dir := t.TempDir()
	if err := os.Symlink(bin, filepath.Join(dir, "pipeopsctl")); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "completion", shell).Output()
	if err != nil {
		t.Fatalf("pipeopsctl completion %s: %v", shell, err)
	}
	script = filepath.Join(dir, "completion."+shell)
	if err := os.WriteFile(script, out, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir + string(os.PathListSeparator) + os.Getenv("PATH"), script
}

// shellOut runs a shell snippet with the real binary first on PATH.
func shellOut(t *testing.T, path string, argv ...string) string {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), "PATH="+path)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, out)
	}
	return string(out)
}

func TestBashCompletionCompletesCommandsSubcommandsAndFlags(t *testing.T) {
	bash := testbin.NeedTool(t, "bash", "bash")
	path, script := completionBin(t, "bash")
	out := shellOut(t, path, bash, "-c", `source "$1"
complete -p pipeopsctl
try() { COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMPREPLY=(); _pipeopsctl; echo "${COMPREPLY[*]}"; }
try pipeopsctl st
try pipeopsctl monitoring ""
try pipeopsctl logs --s
try pipeopsctl completion ""`, "bash", script)
	want := []string{
		"complete -o bashdefault -o default -F _pipeopsctl pipeopsctl",
		"status start stop", "status install uninstall help h", "--since", "bash zsh fish",
	}
	got := strings.Split(strings.TrimSpace(out), "\n")
	if !slices.Equal(got, want) {
		t.Errorf("bash completion:\n got %q\nwant %q", got, want)
	}
}

func TestZshCompletionCompletesCommandsAndFlags(t *testing.T) {
	zsh := testbin.NeedTool(t, "zsh", "zsh")
	path, script := completionBin(t, "zsh")
	// compadd and compdef only exist inside zsh's completion system; stand-ins
	// print what the function offers.
	out := shellOut(t, path, zsh, "-f", "-c", `compdef() { print "compdef $*" }
compadd() { [[ $1 == -- ]] && shift; print -r -- "${(j: :)@}" }
_files() { print files }
source "$1"
try() { words=("$@"); CURRENT=$#; _pipeopsctl }
try pipeopsctl mo
try pipeopsctl logs --f`, "zsh", script)
	got := strings.Split(strings.TrimSpace(out), "\n")
	want := []string{"compdef _pipeopsctl pipeopsctl",
		"status logs doctor start stop restart monitoring ha config install uninstall version completion help h", "--follow"}
	if !slices.Equal(got, want) {
		t.Errorf("zsh completion:\n got %q\nwant %q", got, want)
	}
}

func TestFishCompletionCompletesCommands(t *testing.T) {
	fish := testbin.NeedTool(t, "fish", "fish")
	path, script := completionBin(t, "fish")
	out := shellOut(t, path, fish, "--no-config", "-c", `source $argv[1]; complete -C "pipeopsctl mon"; complete -C "pipeopsctl monitoring "`, script)
	for _, want := range []string{"monitoring\t", "status\t", "uninstall\t"} {
		if !strings.Contains(out, want) {
			t.Errorf("fish completion output lacks %q:\n%s", want, out)
		}
	}
}
