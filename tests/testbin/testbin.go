// Package testbin builds the project's real binaries once per test process,
// for end-to-end tests that run them as separate processes.
package testbin

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// TestVersion is stamped into binaries built here, so tests can assert it.
const TestVersion = "0.0.0-e2e"

var (
	mu    sync.Mutex
	built = map[string]string{}
	dir   string
)

// Build compiles ./cmd/<name> (with the race detector off, for speed) and
// returns the path. It fails the test with the compiler output on error.
func Build(t testing.TB, name string) string {
	t.Helper()
	return BuildTags(t, name, "")
}

// BuildTags is Build with Go build tags (comma-separated), e.g.
// "pipeops_testhooks" for the agent's test seams, which production builds
// do not have.
func BuildTags(t testing.TB, name, tags string) string {
	t.Helper()
	mu.Lock()
	defer mu.Unlock()
	key := name
	if tags != "" {
		key = name + "-" + strings.ReplaceAll(tags, ",", "-")
	}
	if p, ok := built[key]; ok {
		return p
	}
	if dir == "" {
		d, err := os.MkdirTemp("", "pipeops-bin-")
		if err != nil {
			t.Fatal(err)
		}
		dir = d
	}
	out := filepath.Join(dir, key)
	root := moduleRoot()
	ld := "-X github.com/pipeops/pipeops-vm-agent/internal/version.Version=" + TestVersion +
		" -X github.com/pipeops/pipeops-vm-agent/internal/version.Commit=e2ecommit" +
		" -X github.com/pipeops/pipeops-vm-agent/internal/version.Date=2026-01-01T00:00:00Z"
	cmd := exec.Command("go", "build", "-tags", tags, "-ldflags", ld, "-o", out, "./cmd/"+name)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", name, err, b)
	}
	built[key] = out
	return out
}

func moduleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// ShortTempDir returns a directory short enough for unix socket paths
// (sun_path holds 108 bytes; t.TempDir() can exceed it).
func ShortTempDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "po")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// NeedTool finds a host tool on PATH (Debian package pkg). It skips the
// test on a laptop and fails it under CI=true, where scripts/setup-tools.sh
// installs every tool the tests use.
func NeedTool(t testing.TB, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s not found: install it with apt-get install -y %s (scripts/setup-tools.sh does)", name, pkg)
		}
		t.Skipf("%s not found (apt-get install -y %s)", name, pkg)
	}
	return p
}
