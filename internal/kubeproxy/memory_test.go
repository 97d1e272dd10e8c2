package kubeproxy_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pipeops/pipeops-vm-agent/internal/devplane"
	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

// rssKiB reads VmRSS and VmHWM (peak) of a process from /proc.
func rssKiB(t testing.TB, pid int) (rss, peak int64) {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		n, _ := strconv.ParseInt(fields[1], 10, 64)
		switch fields[0] {
		case "VmRSS:":
			rss = n
		case "VmHWM:":
			peak = n
		}
	}
	return rss, peak
}

// startAgentBinary runs the real pipeops-agent against the test cluster
// (its admin kubeconfig, from which the agent bootstraps its own
// ServiceAccount) and the devplane s, and waits until it is on the gateway.
func startAgentBinary(t *testing.T, env *kubetest.Env, s *stack) *exec.Cmd {
	t.Helper()
	bin := testbin.Build(t, "pipeops-agent")
	dir := testbin.ShortTempDir(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	agentID := fmt.Sprintf("proxy-mem-%d", time.Now().UnixNano())
	cmd := exec.Command(bin, "run")
	cmd.Env = append(os.Environ(), "PIPEOPS_API_URL="+s.base, "PIPEOPS_TOKEN="+stackToken, "PIPEOPS_KUBECONFIG="+env.Kubeconfig,
		"PIPEOPS_AGENT_ID="+agentID, "PIPEOPS_STATE_DIR="+dir, "PIPEOPS_SOCKET="+filepath.Join(dir, "a.sock"),
		"PIPEOPS_PORT="+strconv.Itoa(port), "PIPEOPS_LOG_FORMAT=json")
	var logs strings.Builder
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			t.Errorf("pipeops-agent did not stop within 30s of SIGTERM")
		}
		if t.Failed() {
			t.Logf("pipeops-agent log:\n%s", logs.String())
		}
	})
	s.clusterID = devplane.ClusterIDFor(agentID)
	deadline := time.Now().Add(90 * time.Second)
	for {
		if c, ok := s.plane.Cluster(s.clusterID); ok && c.Connected && c.Mode == devplane.KindGateway {
			return cmd
		}
		select {
		case err := <-exited:
			t.Fatalf("pipeops-agent exited: %v\n%s", err, logs.String())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("pipeops-agent did not reach the devplane gateway within 90s\n%s", logs.String())
		}
	}
}

// TestA50MBListStreamsWithoutGrowingTheAgentsMemory lists 50 MB through the
// real pipeops-agent process and reads its RSS from /proc: streaming must
// not buffer the list.
func TestA50MBListStreamsWithoutGrowingTheAgentsMemory(t *testing.T) {
	env := kubetest.Cluster(t)
	ctx := context.Background()
	// 50 ConfigMaps of 1,000,000 bytes: a 50 MB list.
	value := strings.Repeat("0123456789", 100000)
	for i := 0; i < 50; i++ {
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("big-%02d", i)}, Data: map[string]string{"v": value}}
		if _, err := env.Client.CoreV1().ConfigMaps(env.Namespace).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	s := newPlane(t)
	agent := startAgentBinary(t, env, s)
	pid := agent.Process.Pid

	get := func() int64 {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, s.server()+"/api/v1/namespaces/"+env.Namespace+"/configmaps", nil)
		req.Header.Set("Accept", "application/json")
		req.Header.Set("Accept-Encoding", "identity") // the whole 50 MB crosses the agent
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		n, err := io.Copy(io.Discard, resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("list through the agent: status %d, %d bytes, %v", resp.StatusCode, n, err)
		}
		return n
	}
	// Warm up (TLS, HTTP/2, buffers, GC) with a small call, then measure.
	req, _ := http.NewRequest(http.MethodGet, s.server()+"/api/v1/namespaces/"+env.Namespace+"/configmaps/big-00", nil)
	if resp, err := http.DefaultClient.Do(req); err == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	before, _ := rssKiB(t, pid)
	n := get()
	_, peak := rssKiB(t, pid)
	growth := peak - before
	t.Logf("listed %d bytes through the agent; agent RSS %d KiB before, peak %d KiB (growth %d KiB)", n, before, peak, growth)
	if n < 50_000_000 {
		t.Fatalf("the list was %d bytes; want at least 50 MB", n)
	}
	if growth > 20<<10 {
		t.Errorf("the agent's RSS grew by %d KiB while streaming %d bytes; want at most 20 MiB", growth, n)
	}
}
