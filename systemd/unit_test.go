package systemd

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// needTool finds a host tool; it skips on a laptop and fails under CI=true.
func needTool(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s not found: install it with apt-get install -y %s (scripts/host/tools.sh does)", name, pkg)
		}
		t.Skipf("%s not found (apt-get install -y %s)", name, pkg)
	}
	return p
}

func TestUnitHasNoTemplateBraces(t *testing.T) {
	// kardianos/service parses every "{{", even inside comments.
	if strings.Contains(Unit, "{{") {
		t.Fatal("the unit contains \"{{\"; kardianos/service would try to render it")
	}
}

func TestUnitHasTheDirectivesTheAgentRelyOn(t *testing.T) {
	for _, line := range []string{
		"Type=notify", "NotifyAccess=main", "ExecStart=/usr/bin/pipeops-agent run",
		"WatchdogSec=60s", "Restart=always", "RestartPreventExitStatus=2", "Environment=GOTRACEBACK=crash",
		"StateDirectory=pipeops", "RuntimeDirectory=pipeops", "LoadCredentialEncrypted=token:pipeops-agent.token",
		"ConditionPathExists=|/etc/pipeops/token", "ConditionPathExists=|/etc/credstore.encrypted/pipeops-agent.token",
		"MemoryHigh=448M", "MemoryMax=512M", "TasksMax=512", "ProtectSystem=strict", "NoNewPrivileges=yes",
		"CapabilityBoundingSet=", "WantedBy=multi-user.target",
	} {
		t.Run(line, func(t *testing.T) {
			if !hasLine(Unit, line) {
				t.Errorf("unit lacks the line %q", line)
			}
		})
	}
}

func TestUnitHasNoConfigurationDirectory(t *testing.T) {
	// platform.md §1: under ProtectSystem=strict it would make /etc/pipeops writable.
	if hasPrefixLine(Unit, "ConfigurationDirectory=") {
		t.Fatal("unit sets ConfigurationDirectory=; that makes /etc/pipeops writable to the agent")
	}
}

func hasLine(text, line string) bool {
	for _, l := range strings.Split(text, "\n") {
		if strings.TrimSpace(l) == line {
			return true
		}
	}
	return false
}

func hasPrefixLine(text, prefix string) bool {
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), prefix) {
			return true
		}
	}
	return false
}

// analyzeRoot builds a minimal root for systemd-analyze: the host's unit
// directory (for sysinit.target and friends), the unit and an executable at
// the ExecStart path.
func analyzeRoot(t *testing.T, unit string) string {
	t.Helper()
	root := t.TempDir()
	for _, d := range []string{"etc/systemd/system", "usr/bin", "usr/lib/systemd"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("cp", "-a", "/usr/lib/systemd/system", filepath.Join(root, "usr/lib/systemd/")).CombinedOutput(); err != nil {
		t.Fatalf("copy /usr/lib/systemd/system: %v: %s", err, out)
	}
	if err := os.WriteFile(filepath.Join(root, "usr/bin/pipeops-agent"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc/systemd/system", UnitName), []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	return root
}

// verify runs systemd-analyze verify and returns its stderr. Its exit code
// lies (unknown keys print "…, ignoring." and exit 0), so stderr is the verdict.
func verify(t *testing.T, unit string) string {
	t.Helper()
	sa := needTool(t, "systemd-analyze", "systemd")
	root := analyzeRoot(t, unit)
	var stderr bytes.Buffer
	cmd := exec.Command(sa, "verify", "--root="+root, "--man=no", "/etc/systemd/system/"+UnitName)
	cmd.Stderr = &stderr
	err := cmd.Run()
	if err != nil && stderr.Len() == 0 {
		t.Fatalf("systemd-analyze verify: %v", err)
	}
	return stderr.String()
}

func TestUnitVerifiesWithEmptyStderr(t *testing.T) {
	if msg := verify(t, Unit); msg != "" {
		t.Fatalf("systemd-analyze verify printed:\n%s", msg)
	}
}

func TestVerifyCatchesATypoThatExitsZero(t *testing.T) {
	// Guards the check above: a misspelt value must show up on stderr.
	bad := strings.Replace(Unit, "Type=notify", "Type=notfy", 1)
	if msg := verify(t, bad); !strings.Contains(msg, "notfy") {
		t.Fatalf("systemd-analyze verify did not report Type=notfy; stderr: %q", msg)
	}
}

var reExposure = regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+)`)

func TestUnitSecurityExposureIsAtMost25(t *testing.T) {
	sa := needTool(t, "systemd-analyze", "systemd")
	root := analyzeRoot(t, Unit)
	out, err := exec.Command(sa, "security", "--offline=yes", "--root="+root, "--threshold=25", "--no-pager",
		"/etc/systemd/system/"+UnitName).CombinedOutput()
	m := reExposure.FindSubmatch(out)
	if m == nil {
		t.Fatalf("systemd-analyze security printed no exposure level (err %v):\n%s", err, out)
	}
	score, _ := strconv.ParseFloat(string(m[1]), 64)
	t.Logf("systemd-analyze security --offline=yes: exposure %.1f", score)
	if err != nil || score > 2.5 {
		t.Fatalf("exposure %.1f exceeds 2.5 (err %v); tighten the unit or justify the loosening", score, err)
	}
}
