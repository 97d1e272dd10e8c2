package installer

import (
	"context"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/pipeops/pipeops-vm-agent/internal/paths"
	"github.com/pipeops/pipeops-vm-agent/systemd"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

// stubSystemctl puts a fake systemctl first on PATH (tests/testbin).
func stubSystemctl(t *testing.T) (log func() []string, setActive func(bool)) {
	s := testbin.StubSystemctl(t)
	return s.Calls, s.SetActive
}

func newInstaller(t *testing.T, root string, o Options) *Installer {
	t.Helper()
	o.Root = root
	in, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return in
}

func read(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func mode(t *testing.T, p string) os.FileMode {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode().Perm()
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	p := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(p, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if want := read(t, p); got != want {
		t.Fatalf("%s differs from %s (rerun with -update):\n%s", name, p, got)
	}
}

var ctx = context.Background()

func TestInstallWritesTokenConfigUnitThenStarts(t *testing.T) {
	log, _ := stubSystemctl(t)
	root := t.TempDir()
	res, err := newInstaller(t, root, Options{Token: "tok-123", APIURL: "https://cp.example.com", ClusterName: "edge-1"}).Install(ctx)
	if err != nil {
		t.Fatalf("Install: %v", err)
	}
	if got := read(t, filepath.Join(root, paths.TokenFile)); got != "tok-123\n" {
		t.Errorf("token file = %q; want %q", got, "tok-123\n")
	}
	if m := mode(t, filepath.Join(root, paths.TokenFile)); m != 0o600 {
		t.Errorf("token mode = %v; want 0600", m)
	}
	golden(t, "10-install.yaml", read(t, filepath.Join(root, paths.DropInDir, "10-install.yaml")))
	if read(t, filepath.Join(root, paths.LocalUnit)) != systemd.Unit {
		t.Error("the unit on disk is not the embedded unit")
	}
	if m := mode(t, filepath.Join(root, "/usr/bin/pipeops-uninstall.sh")); m != 0o755 {
		t.Errorf("uninstall script mode = %v; want 0755", m)
	}
	want := []string{"enable pipeops-agent.service", "daemon-reload", "is-active pipeops-agent.service", "start pipeops-agent.service"}
	if got := log(); !slices.Equal(got, want) {
		t.Errorf("systemctl calls = %q; want %q", got, want)
	}
	if res.Action != "started" || !slices.Equal(res.Changed, []string{"token", "config", "unit", "uninstall script"}) {
		t.Errorf("result = %+v", res)
	}
}

func TestReinstallWithTheSameInputsChangesNothing(t *testing.T) {
	log, _ := stubSystemctl(t)
	root := t.TempDir()
	o := Options{Token: "tok-123", APIURL: "https://cp.example.com", ClusterName: "edge-1"}
	if _, err := newInstaller(t, root, o).Install(ctx); err != nil {
		t.Fatal(err)
	}
	log()
	res, err := newInstaller(t, root, o).Install(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.Action != "unchanged" || len(res.Changed) != 0 {
		t.Errorf("second install = %+v; want nothing changed", res)
	}
	if got := log(); !slices.Equal(got, []string{"is-active pipeops-agent.service"}) {
		t.Errorf("systemctl calls = %q; want only is-active", got)
	}
}

func TestReinstallRestartsOnlyWhatChanged(t *testing.T) {
	cases := []struct {
		name    string
		prep    func(root string)
		o       Options
		changed []string
		calls   []string
	}{
		{"a new token restarts", nil, Options{Token: "tok-456"}, []string{"token"},
			[]string{"is-active pipeops-agent.service", "restart pipeops-agent.service"}},
		{"a new cluster name keeps the api url and restarts", nil, Options{ClusterName: "edge-2"}, []string{"config"},
			[]string{"is-active pipeops-agent.service", "restart pipeops-agent.service"}},
		{"an outdated unit is replaced and restarted", func(root string) {
			_ = os.WriteFile(filepath.Join(root, paths.LocalUnit), []byte("[Service]\nExecStart=/old\n"), 0o644)
		}, Options{}, []string{"unit"}, []string{
			"disable pipeops-agent.service", "daemon-reload", "enable pipeops-agent.service", "daemon-reload",
			"is-active pipeops-agent.service", "restart pipeops-agent.service"}},
		{"--restart restarts although nothing changed", nil, Options{Restart: true}, nil,
			[]string{"is-active pipeops-agent.service", "restart pipeops-agent.service"}},
		{"a binary directory gets an ExecStart drop-in", nil, Options{BinDir: "/usr/local/bin"},
			[]string{"exec drop-in", "uninstall script"},
			[]string{"daemon-reload", "is-active pipeops-agent.service", "restart pipeops-agent.service"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			log, _ := stubSystemctl(t)
			root := t.TempDir()
			if _, err := newInstaller(t, root, Options{Token: "tok-123", APIURL: "https://cp.example.com", ClusterName: "edge-1"}).Install(ctx); err != nil {
				t.Fatal(err)
			}
			log()
			if tc.prep != nil {
				tc.prep(root)
			}
			res, err := newInstaller(t, root, tc.o).Install(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(res.Changed, tc.changed) {
				t.Errorf("changed = %q; want %q", res.Changed, tc.changed)
			}
			if got := log(); !slices.Equal(got, tc.calls) {
				t.Errorf("systemctl calls = %q; want %q", got, tc.calls)
			}
			if s := read(t, filepath.Join(root, paths.DropInDir, "10-install.yaml")); !strings.Contains(s, "https://cp.example.com") {
				t.Errorf("10-install.yaml lost the api url:\n%s", s)
			}
		})
	}
}

func TestExecDropInPointsAtTheBinaryDirectory(t *testing.T) {
	stubSystemctl(t)
	root := t.TempDir()
	if _, err := newInstaller(t, root, Options{Token: "t", BinDir: "/opt/pipeops/bin"}).Install(ctx); err != nil {
		t.Fatal(err)
	}
	golden(t, "10-exec.conf", read(t, filepath.Join(root, paths.LocalUnit+".d", "10-exec.conf")))
	if _, err := os.Stat(filepath.Join(root, "/opt/pipeops/bin/pipeops-uninstall.sh")); err != nil {
		t.Errorf("uninstall script not beside the binaries: %v", err)
	}
}

func TestInstallLeavesAPackagedUnitAlone(t *testing.T) {
	log, _ := stubSystemctl(t)
	root := t.TempDir()
	pkg := filepath.Join(root, paths.PackagedUnit)
	_ = os.MkdirAll(filepath.Dir(pkg), 0o755)
	_ = os.WriteFile(pkg, []byte(systemd.Unit), 0o644)
	res, err := newInstaller(t, root, Options{Token: "tok-123"}).Install(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{paths.LocalUnit, "/usr/bin/pipeops-uninstall.sh"} {
		if _, err := os.Stat(filepath.Join(root, p)); err == nil {
			t.Errorf("%s written although a package owns the unit", p)
		}
	}
	want := []string{"enable pipeops-agent.service", "is-active pipeops-agent.service", "start pipeops-agent.service"}
	if got := log(); !slices.Equal(got, want) || !res.PackageOwned {
		t.Errorf("systemctl calls = %q (package owned %v); want %q", got, res.PackageOwned, want)
	}
}

// notSystemd is what kardianos/service reports on a host without systemd.
type notSystemd struct{ Service }

func (notSystemd) Platform() string { return "unix-systemv" }

func TestInstallFailsClearlyWhenPID1IsNotSystemd(t *testing.T) {
	root := t.TempDir()
	_, err := newInstaller(t, root, Options{Token: "tok", Service: notSystemd{}}).Install(ctx)
	if !errors.Is(err, ErrNoSystemd) || !strings.Contains(err.Error(), "unix-systemv") {
		t.Fatalf("Install error = %v; want ErrNoSystemd naming unix-systemv", err)
	}
	if entries, _ := os.ReadDir(root); len(entries) != 0 {
		t.Errorf("Install wrote %d entries into the root before failing", len(entries))
	}
}

func TestInstallRejectsABadConfigAndPutsTheOldFilesBack(t *testing.T) {
	log, _ := stubSystemctl(t)
	root := t.TempDir()
	if _, err := newInstaller(t, root, Options{Token: "tok-123", APIURL: "https://cp.example.com"}).Install(ctx); err != nil {
		t.Fatal(err)
	}
	before := read(t, filepath.Join(root, paths.DropInDir, "10-install.yaml"))
	log()
	_, err := newInstaller(t, root, Options{Token: "tok-new", APIURL: "ftp://cp.example.com"}).Install(ctx)
	if err == nil || !strings.Contains(err.Error(), "pipeops.api_url") {
		t.Fatalf("Install error = %v; want one naming pipeops.api_url", err)
	}
	if got := read(t, filepath.Join(root, paths.DropInDir, "10-install.yaml")); got != before {
		t.Errorf("10-install.yaml not restored:\n%s", got)
	}
	if got := read(t, filepath.Join(root, paths.TokenFile)); got != "tok-123\n" {
		t.Errorf("token not restored: %q", got)
	}
	if got := log(); len(got) != 1 || got[0] != "" {
		t.Errorf("systemctl ran %q on a bad config; want nothing", got)
	}
}

func TestInstallNeedsAToken(t *testing.T) {
	stubSystemctl(t)
	_, err := newInstaller(t, t.TempDir(), Options{}).Install(ctx)
	if err == nil || !strings.Contains(err.Error(), "--token-file") {
		t.Fatalf("Install error = %v; want a hint about --token-file", err)
	}
	_, err = newInstaller(t, t.TempDir(), Options{Token: "two words"}).Install(ctx)
	if err == nil || !strings.Contains(err.Error(), "spaces") {
		t.Fatalf("Install error = %v; want a complaint about spaces", err)
	}
}

func TestUninstallKeepsConfigUnlessPurged(t *testing.T) {
	for _, purge := range []bool{false, true} {
		t.Run(map[bool]string{false: "remove keeps config and state", true: "purge removes everything"}[purge], func(t *testing.T) {
			log, _ := stubSystemctl(t)
			root := t.TempDir()
			in := newInstaller(t, root, Options{Token: "tok-123", ClusterName: "x"})
			if _, err := in.Install(ctx); err != nil {
				t.Fatal(err)
			}
			for _, p := range append([]string{paths.AgentBinary, paths.CtlBinary, paths.HelmBinary}, paths.CompletionFiles()...) {
				_ = os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755)
				_ = os.WriteFile(filepath.Join(root, p), []byte("bin"), 0o755)
			}
			_ = os.MkdirAll(filepath.Join(root, paths.DefaultState), 0o700)
			log()
			if _, err := in.Uninstall(ctx, purge); err != nil {
				t.Fatal(err)
			}
			want := []string{"is-active pipeops-agent.service", "stop pipeops-agent.service", "disable pipeops-agent.service", "daemon-reload"}
			if got := log(); !slices.Equal(got, want) {
				t.Errorf("systemctl calls = %q; want %q", got, want)
			}
			for _, p := range append([]string{paths.LocalUnit, paths.AgentBinary, paths.CtlBinary, paths.HelmBinary, "/usr/bin/pipeops-uninstall.sh"},
				paths.CompletionFiles()...) {
				if _, err := os.Stat(filepath.Join(root, p)); err == nil {
					t.Errorf("%s still there", p)
				}
			}
			for _, p := range []string{paths.TokenFile, paths.DefaultState} {
				_, err := os.Stat(filepath.Join(root, p))
				if purge != (err != nil) {
					t.Errorf("purge=%v: %s exists=%v", purge, p, err == nil)
				}
			}
		})
	}
}

func TestUninstallRefusesAPackagedInstall(t *testing.T) {
	stubSystemctl(t)
	root := t.TempDir()
	pkg := filepath.Join(root, paths.PackagedUnit)
	_ = os.MkdirAll(filepath.Dir(pkg), 0o755)
	_ = os.WriteFile(pkg, []byte(systemd.Unit), 0o644)
	_, err := newInstaller(t, root, Options{}).Uninstall(ctx, true)
	if !errors.Is(err, ErrPackageOwned) || !strings.Contains(err.Error(), "apt-get") {
		t.Fatalf("Uninstall error = %v; want ErrPackageOwned with an apt hint", err)
	}
}

func TestInstallWithHATurnsItOnAndAReinstallWithoutTheFlagKeepsIt(t *testing.T) {
	stubSystemctl(t)
	root := t.TempDir()
	if _, err := newInstaller(t, root, Options{Token: "tok-123", ClusterName: "edge-1", HA: true}).Install(ctx); err != nil {
		t.Fatalf("Install --ha: %v", err)
	}
	dropIn := filepath.Join(root, paths.DropInDir, "10-install.yaml")
	if got := read(t, dropIn); !strings.Contains(got, "ha:\n  enabled: true\n") || !strings.Contains(got, `name: "edge-1"`) {
		t.Fatalf("10-install.yaml after install --ha:\n%s", got)
	}
	if _, err := newInstaller(t, root, Options{ClusterName: "edge-2"}).Install(ctx); err != nil {
		t.Fatalf("reinstall: %v", err)
	}
	if got := read(t, dropIn); !strings.Contains(got, "ha:\n  enabled: true\n") {
		t.Fatalf("a reinstall without --ha turned HA off:\n%s", got)
	}
}
