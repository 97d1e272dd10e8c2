package kubectl

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/devplane"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

// The test cluster's node has this machine's address (127.0.0.1), so the
// agent reads its usage from /proc. Burning every CPU with child processes
// must raise the heartbeat's cpu_usage; local status names the source, the
// heartbeat on the wire does not.
func TestTheHeartbeatCarriesThisNodesRealCPUUsageFromProc(t *testing.T) {
	s := startStack(t)
	const want = "proc on kwok-node-0"
	var st apitype.StatusResponse
	testbin.Eventually(t, 30*time.Second, "local status names /proc as the source of both figures", func() bool {
		st = s.status(t)
		return st.Kubernetes.CPUSource == want && st.Kubernetes.MemorySource == want
	}, func() string { return fmt.Sprintf("%+v", st.Kubernetes) })

	// Heartbeats come every second; the CPU rate covers one interval.
	baseline := s.heartbeatCPU(t)
	t.Logf("cpu_usage before the burners: %.1f%%", baseline)
	for range runtime.NumCPU() {
		burner := exec.Command("sh", "-c", "while :; do :; done")
		if err := burner.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = burner.Process.Kill(); _ = burner.Wait() })
	}
	// With a burner per CPU no CPU is ever idle, whatever else runs.
	var got float64
	testbin.Eventually(t, 60*time.Second, "cpu_usage at 90% or more with a burner on every CPU", func() bool {
		got = s.heartbeatCPU(t)
		return got >= 90
	}, func() string { return fmt.Sprintf("last cpu_usage %.1f%% (before %.1f%%)", got, baseline) })
	t.Logf("cpu_usage with %d burners: %.1f%%", runtime.NumCPU(), got)

	raw := s.lastHeartbeat(t)
	if strings.Contains(string(raw), "source") {
		t.Errorf("the heartbeat carries a usage source: %s; §4.2 has no such key", raw)
	}
}

// status is the agent's local status through pipeopsctl.
func (s *stack) status(t *testing.T) apitype.StatusResponse {
	t.Helper()
	out, err := exec.Command(testbin.Build(t, "pipeopsctl"), "--socket", s.socket, "status", "--json").Output()
	var st apitype.StatusResponse
	if err == nil {
		_ = json.Unmarshal(out, &st)
	}
	return st
}

// lastHeartbeat is the newest heartbeat the devplane received, as sent.
func (s *stack) lastHeartbeat(t *testing.T) json.RawMessage {
	t.Helper()
	resp, err := http.Get(s.planeURL + "/admin/clusters/" + s.clusterID)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var c devplane.ClusterInfo
	if err := json.NewDecoder(resp.Body).Decode(&c); err != nil {
		t.Fatal(err)
	}
	return c.LastHeartbeat
}

// heartbeatCPU waits for a heartbeat newer than now and returns its cpu_usage.
func (s *stack) heartbeatCPU(t *testing.T) float64 {
	t.Helper()
	since := time.Now()
	var cpu float64
	testbin.Eventually(t, 30*time.Second, "a fresh heartbeat with cpu_usage", func() bool {
		resp, err := http.Get(s.planeURL + "/admin/clusters/" + s.clusterID)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var c devplane.ClusterInfo
		if json.NewDecoder(resp.Body).Decode(&c) != nil || !c.LastHeartbeatAt.After(since) {
			return false
		}
		v, err := strconv.ParseFloat(strings.TrimSuffix(c.Heartbeat().Metadata.CPUUsage, "%"), 64)
		cpu = v
		return err == nil
	})
	return cpu
}
