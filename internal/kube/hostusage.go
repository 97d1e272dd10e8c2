package kube

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// hostUsage is this machine's CPU and memory use, read from /proc: what the
// node the agent runs on really uses, not what its pods requested. CPU is
// a rate over at least one heartbeat interval (every): status calls in
// between reuse the last rate. Not safe for concurrent use (telemetry holds
// its lock).
type hostUsage struct {
	stat, meminfo string
	every         time.Duration

	prev   cpuSample
	prevAt time.Time
	busy   float64 // fraction of all CPUs busy over the last interval
	have   bool
}

// cpuSample is the first line of /proc/stat, in clock ticks since boot.
type cpuSample struct {
	busy, total uint64
	cpus        int
}

func newHostUsage(every time.Duration) *hostUsage {
	return &hostUsage{stat: "/proc/stat", meminfo: "/proc/meminfo", every: every}
}

// cpu is the CPU in use (millicores) and the machine's CPUs (millicores).
// The first interval ends at least a second after the first sample, so the
// first heartbeats need not wait a whole interval for a figure.
func (h *hostUsage) cpu(now time.Time) (used, capacity int64, ok bool) {
	s, err := readCPU(h.stat)
	if err != nil || s.cpus == 0 {
		return 0, 0, false
	}
	if h.prevAt.IsZero() {
		h.prev, h.prevAt = s, now
		return 0, 0, false
	}
	if el := now.Sub(h.prevAt); el >= h.every || (!h.have && el >= time.Second) {
		if s.total > h.prev.total && s.busy >= h.prev.busy {
			h.busy = float64(s.busy-h.prev.busy) / float64(s.total-h.prev.total)
			h.have = true
		}
		h.prev, h.prevAt = s, now
	}
	if !h.have {
		return 0, 0, false
	}
	capacity = int64(s.cpus) * 1000
	return int64(h.busy * float64(capacity)), capacity, true
}

// memory is the memory in use (MemTotal - MemAvailable) and MemTotal, in bytes.
func (h *hostUsage) memory() (used, capacity int64, ok bool) {
	b, err := os.ReadFile(h.meminfo)
	if err != nil {
		return 0, 0, false
	}
	var total, avail int64 = -1, -1
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		v, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		switch f[0] {
		case "MemTotal:":
			total = v << 10 // kB
		case "MemAvailable:":
			avail = v << 10
		}
	}
	if total <= 0 || avail < 0 || avail > total {
		return 0, 0, false
	}
	return total - avail, total, true
}

// readCPU parses /proc/stat: the aggregate "cpu" line (user nice system
// idle iowait irq softirq steal; guest time is already in user) and the
// number of "cpuN" lines. Idle and iowait are not busy.
func readCPU(path string) (cpuSample, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return cpuSample{}, err
	}
	var s cpuSample
	found := false
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "cpu") {
			continue
		}
		f := strings.Fields(line)
		if f[0] != "cpu" {
			s.cpus++
			continue
		}
		if len(f) < 9 {
			return cpuSample{}, fmt.Errorf("%s: short cpu line %q", path, line)
		}
		var v [8]uint64
		for i := range v {
			if v[i], err = strconv.ParseUint(f[i+1], 10, 64); err != nil {
				return cpuSample{}, fmt.Errorf("%s: %w", path, err)
			}
			s.total += v[i]
		}
		s.busy = s.total - v[3] - v[4]
		found = true
	}
	if !found {
		return cpuSample{}, fmt.Errorf("%s: no cpu line", path)
	}
	return s, nil
}

// selfNode names the node this machine is: the node whose name is the host
// name (k3s, kubeadm and RKE2 name nodes so), else the node with an address
// of one of this machine's interfaces. "" when none is.
func selfNode(nodes []*corev1.Node, hostname string, local map[string]bool) string {
	short, _, _ := strings.Cut(strings.ToLower(hostname), ".")
	for _, n := range nodes {
		if name := strings.ToLower(n.Name); hostname != "" && (name == strings.ToLower(hostname) || name == short) {
			return n.Name
		}
	}
	for _, n := range nodes {
		for _, a := range n.Status.Addresses {
			if (a.Type == corev1.NodeInternalIP || a.Type == corev1.NodeExternalIP) && local[a.Address] {
				return n.Name
			}
		}
	}
	return ""
}

// localAddrs are this machine's interface addresses.
func localAddrs() map[string]bool {
	out := map[string]bool{}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return out
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok {
			out[ipn.IP.String()] = true
		}
	}
	return out
}
