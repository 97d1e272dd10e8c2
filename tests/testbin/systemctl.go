package testbin

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Systemctl is a fake systemctl first on PATH, for code that runs the real
// binary by name. It logs each call's argv and keeps the unit's active state
// in a file, the way the real one answers is-active.
type Systemctl struct{ dir string }

const systemctlScript = `#!/bin/sh
echo "$*" >> "$STUB_DIR/systemctl.log"
case "$1" in
is-active) s=$(cat "$STUB_DIR/active" 2>/dev/null || echo inactive); echo "$s"; [ "$s" = active ] || exit 3 ;;
start|restart) echo active > "$STUB_DIR/active" ;;
stop) echo inactive > "$STUB_DIR/active" ;;
esac
exit 0
`

// StubSystemctl installs the fake for the rest of the test.
func StubSystemctl(t testing.TB) *Systemctl {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "systemctl"), []byte(systemctlScript), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("STUB_DIR", dir)
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	return &Systemctl{dir: dir}
}

// Calls returns the argv lines logged since the last call, and clears the log.
func (s *Systemctl) Calls() []string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "systemctl.log"))
	_ = os.Remove(filepath.Join(s.dir, "systemctl.log"))
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

// SetActive sets what is-active answers.
func (s *Systemctl) SetActive(on bool) {
	state := "inactive\n"
	if on {
		state = "active\n"
	}
	_ = os.WriteFile(filepath.Join(s.dir, "active"), []byte(state), 0o644)
}
