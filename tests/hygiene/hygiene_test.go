// Package hygiene holds repository-wide checks: every package documents
// itself once, and the import rules of conventions.md §1 hold.
package hygiene

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/pipeops/pipeops-vm-agent"

type pkg struct {
	ImportPath   string
	Dir          string
	GoFiles      []string
	Imports      []string
	TestImports  []string
	XTestImports []string
	Deps         []string
}

func listPackages(t *testing.T) []pkg {
	t.Helper()
	out, err := exec.Command("go", "list", "-json", module+"/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var p pkg
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

func TestEveryPackageHasExactlyOneDocComment(t *testing.T) {
	for _, p := range listPackages(t) {
		if len(p.GoFiles) == 0 {
			continue // test-only package
		}
		docs := 0
		for _, f := range p.GoFiles {
			af, err := parser.ParseFile(token.NewFileSet(), filepath.Join(p.Dir, f), nil, parser.ParseComments|parser.PackageClauseOnly)
			if err != nil {
				t.Fatal(err)
			}
			if af.Doc != nil && strings.TrimSpace(af.Doc.Text()) != "" {
				docs++
			}
		}
		if docs != 1 {
			t.Errorf("%s has %d package doc comments; want exactly 1", p.ImportPath, docs)
		}
	}
}

// stdlibOnly are the leaves: they import nothing outside the standard library.
var stdlibOnly = []string{"internal/apitype", "internal/paths", "internal/state", "internal/health", "internal/backoff", "internal/version", "internal/hostinfo", "internal/tlsconfig", "systemd"}

func TestImportRules(t *testing.T) {
	for _, p := range listPackages(t) {
		rel := strings.TrimPrefix(strings.TrimPrefix(p.ImportPath, module), "/")
		for _, leaf := range stdlibOnly {
			if rel != leaf {
				continue
			}
			for _, imp := range p.Imports {
				if strings.Contains(strings.Split(imp, "/")[0], ".") {
					t.Errorf("%s imports %s; leaves use the standard library only", rel, imp)
				}
			}
		}
		for _, imp := range p.Imports {
			switch {
			case strings.HasPrefix(rel, "internal/") && (imp == module+"/daemon" || imp == module+"/internal/cli" ||
				imp == module+"/installer" && rel != "internal/cli"): // the package table lets the CLI drive the installer
				t.Errorf("%s imports %s; nothing under internal/ may", rel, imp)
			case imp == "github.com/kardianos/service" && rel != "installer":
				t.Errorf("%s imports kardianos/service; only installer may", rel)
			case strings.HasPrefix(imp, "github.com/coreos/go-systemd") && rel != "internal/sdnotify" && rel != "internal/logging":
				t.Errorf("%s imports %s; only sdnotify and logging may", rel, imp)
			case imp == module+"/internal/devplane" && (rel == "daemon" || strings.HasPrefix(rel, "internal/") && rel != "internal/devplane"):
				if !strings.HasSuffix(rel, "test") {
					t.Errorf("%s imports the reference control plane; only tests and cmd/pipeops-devplane may", rel)
				}
			}
		}
	}
}

// handlers ride on the control-plane connection; they and internal/controlplane
// meet only in internal/protocol's Conn and Handler (and in the daemon,
// which wires them).
var handlers = []string{"internal/kubeproxy", "internal/tunnel", "internal/routesync"}

// seamMayImport are the project packages the seam's package may import:
// leaves only, so that every side can import it.
var seamMayImport = []string{"internal/apitype", "internal/hostinfo"}

func TestHandlersAndTheControlPlaneKnowEachOtherOnlyThroughTheSeam(t *testing.T) {
	for _, p := range listPackages(t) {
		rel := strings.TrimPrefix(strings.TrimPrefix(p.ImportPath, module), "/")
		for _, dep := range p.Deps { // Deps is transitive and excludes test files
			if !strings.HasPrefix(dep, module+"/") {
				continue
			}
			d := strings.TrimPrefix(dep, module+"/")
			switch {
			case slices.Contains(handlers, rel) && d == "internal/controlplane":
				t.Errorf("%s imports internal/controlplane; a handler knows the connection only through protocol.Conn", rel)
			case rel == "internal/controlplane" && slices.Contains(handlers, d):
				t.Errorf("internal/controlplane imports %s; it reaches handlers only through protocol.Handler, wired by the daemon", d)
			case rel == "internal/protocol" && !slices.Contains(seamMayImport, d):
				t.Errorf("internal/protocol imports %s; it may import only the leaves %v", d, seamMayImport)
			}
		}
	}
}

// TestTheDaemonStaysSmall guards issue 4's idle RSS: the daemon must not
// link Helm (it runs in the pipeops-agent-helm worker, package monitor) nor
// text/template, whose reflective method calls keep every exported method
// of every linked type alive and nearly double the binary.
func TestTheDaemonStaysSmall(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", module+"/cmd/pipeops-agent").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		switch {
		case strings.HasPrefix(dep, "helm.sh/"), dep == module+"/internal/charts":
			t.Errorf("pipeops-agent links %s; Helm belongs in cmd/pipeops-agent-helm (internal/monitor.Exec)", dep)
		case dep == "text/template", dep == "html/template", dep == "github.com/urfave/cli/v2":
			t.Errorf("pipeops-agent links %s; it disables the linker's method pruning", dep)
		}
	}
}

// sleepsAllowed are the test sleeps that are part of what is tested (time
// that must pass), not waits for a condition; each carries a comment saying
// so. daemon/ and scripts/ are not checked yet.
var sleepsAllowed = map[string]int{
	"internal/tunnel/tunnel_test.go":       1, // traffic with pauses shorter than the inactivity timeout
	"internal/routesync/routesync_test.go": 1, // the control-plane outage itself
}

// TestTestsWaitOnConditionsNotSleeps counts time.Sleep in test files: a
// test waits for what it needs (testbin.Eventually), so it is neither slow
// on a fast machine nor flaky on a busy one.
func TestTestsWaitOnConditionsNotSleeps(t *testing.T) {
	root, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		t.Fatalf("go list -m: %v", err)
	}
	dir := strings.TrimSpace(string(root))
	found := map[string]int{}
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		if d.IsDir() {
			if rel == "daemon" || rel == "scripts" || d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".") && rel != "." {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, 0)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			if sel, ok := n.(*ast.SelectorExpr); ok && sel.Sel.Name == "Sleep" {
				if x, ok := sel.X.(*ast.Ident); ok && x.Name == "time" {
					found[filepath.ToSlash(rel)]++
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for file, n := range found {
		if n > sleepsAllowed[file] {
			t.Errorf("%s calls time.Sleep %d times (%d allowed): wait on the condition instead (testbin.Eventually)", file, n, sleepsAllowed[file])
		}
	}
	for file, n := range sleepsAllowed {
		if found[file] < n {
			t.Errorf("%s calls time.Sleep %d times, fewer than the %d allowed: lower its entry in sleepsAllowed", file, found[file], n)
		}
	}
}
