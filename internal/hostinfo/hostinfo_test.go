package hostinfo

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"
)

func TestAgentIDIsStableAndShaped(t *testing.T) {
	a := AgentID("vm-1", "0123456789abcdef", "52:54:00:12:34:56")
	if !regexp.MustCompile(`^agent-[0-9a-f]{16}$`).MatchString(a) {
		t.Fatalf("AgentID = %q; want agent-<16 hex>", a)
	}
	if b := AgentID("vm-1", "0123456789abcdef", "52:54:00:12:34:56"); a != b {
		t.Fatalf("AgentID not deterministic: %q vs %q", a, b)
	}
	if c := AgentID("vm-1", "other-machine", "52:54:00:12:34:56"); c == a {
		t.Fatal("a different machine-id must give a different id")
	}
}

func TestReadSpecsFromFixtureTree(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "proc"), 0o755)
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "proc/meminfo"), []byte("MemTotal:        8152000 kB\nMemFree: 1 kB\n"), 0o644)
	os.WriteFile(filepath.Join(root, "etc/os-release"), []byte("NAME=Debian\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n"), 0o644)
	os.WriteFile(filepath.Join(root, "etc/machine-id"), []byte("abc123\n"), 0o644)
	r := Root(root)
	s := r.ReadSpecs()
	if s.MemoryGB != 7 || s.OS != "Debian GNU/Linux 12 (bookworm)" || s.CPUCores < 1 {
		t.Fatalf("ReadSpecs = %+v; want 7 GiB, Debian 12, cores>=1", s)
	}
	if r.MachineID() != "abc123" {
		t.Fatalf("MachineID = %q", r.MachineID())
	}
}

func TestOutboundIPOnLoopback(t *testing.T) {
	if ip := OutboundIP("127.0.0.1:9"); ip != "127.0.0.1" {
		t.Fatalf("OutboundIP(127.0.0.1:9) = %q; want 127.0.0.1", ip)
	}
}
