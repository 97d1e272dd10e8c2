// Package hostinfo reads facts about the VM the agent runs on: host name,
// machine id, the IP of the outbound interface, CPU, memory, disk and OS.
// It never calls public IP lookup services. Standard library only.
package hostinfo

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
)

// Specs is register.server_specs (protocol.md §4.1). Zero values are omitted.
type Specs struct {
	CPUCores int    `json:"cpu_cores,omitempty"`
	MemoryGB int    `json:"memory_gb,omitempty"`
	DiskGB   int    `json:"disk_gb,omitempty"`
	OS       string `json:"os,omitempty"`
}

// Root lets tests point the /proc, /etc readers at a fixture tree.
type Root string

func (r Root) path(p string) string { return string(r) + p }

// Hostname is the VM's host name.
func Hostname() string {
	h, err := os.Hostname()
	if err != nil {
		return "unknown"
	}
	return h
}

// MachineID reads /etc/machine-id (or the dbus copy).
func (r Root) MachineID() string {
	for _, p := range []string{"/etc/machine-id", "/var/lib/dbus/machine-id"} {
		if b, err := os.ReadFile(r.path(p)); err == nil {
			if id := strings.TrimSpace(string(b)); id != "" {
				return id
			}
		}
	}
	return ""
}

// FirstMAC is the hardware address of the first non-loopback interface.
func FirstMAC() string {
	ifs, err := net.Interfaces()
	if err != nil {
		return ""
	}
	for _, i := range ifs {
		if i.Flags&net.FlagLoopback == 0 && len(i.HardwareAddr) > 0 {
			return i.HardwareAddr.String()
		}
	}
	return ""
}

// AgentID derives the stable id of protocol.md §8.1: "agent-" + hex of the
// first 8 bytes of SHA-256 over hostname|machine-id|mac|POD_UID|POD_NAMESPACE|POD_NAME.
// On a host the pod fields are empty, so the id survives reinstalls.
func AgentID(hostname, machineID, mac string) string {
	sum := sha256.Sum256([]byte(strings.Join([]string{hostname, machineID, mac, "", "", ""}, "|")))
	return "agent-" + hex.EncodeToString(sum[:8])
}

// OutboundIP is the local address the kernel would use to reach target
// (a UDP "dial" sends no packet). Returns "" when there is no route.
func OutboundIP(target string) string {
	c, err := net.Dial("udp", target)
	if err != nil {
		return ""
	}
	defer c.Close()
	if a, ok := c.LocalAddr().(*net.UDPAddr); ok {
		return a.IP.String()
	}
	return ""
}

// ReadSpecs gathers server_specs from /proc, statfs of / and os-release.
func (r Root) ReadSpecs() Specs {
	s := Specs{CPUCores: runtime.NumCPU(), OS: r.OSName()}
	if kb := r.memTotalKB(); kb > 0 {
		s.MemoryGB = int(kb / (1024 * 1024))
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(r.path("/"), &st); err == nil {
		s.DiskGB = int(uint64(st.Blocks) * uint64(st.Bsize) / (1 << 30))
	}
	return s
}

func (r Root) memTotalKB() int64 {
	f, err := os.Open(r.path("/proc/meminfo"))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "MemTotal:" {
			n, _ := strconv.ParseInt(fields[1], 10, 64)
			return n
		}
	}
	return 0
}

// OSName is PRETTY_NAME from os-release, else "linux".
func (r Root) OSName() string {
	for _, p := range []string{"/etc/os-release", "/usr/lib/os-release"} {
		b, err := os.ReadFile(r.path(p))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "PRETTY_NAME="); ok {
				if u, err := strconv.Unquote(v); err == nil {
					return u
				}
				return strings.Trim(v, `"'`)
			}
		}
	}
	return "linux"
}
