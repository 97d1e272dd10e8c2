package kubeproxy_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/pipeops/pipeops-vm-agent/internal/config"
	"github.com/pipeops/pipeops-vm-agent/internal/controlplane"
	"github.com/pipeops/pipeops-vm-agent/internal/health"
	"github.com/pipeops/pipeops-vm-agent/internal/kubeproxy"
	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
	"github.com/pipeops/pipeops-vm-agent/internal/state"
)

// Environment of the agent helper process (see runAgentHelper).
const (
	envHelper     = "KUBEPROXY_TEST_AGENT_HELPER"
	envHelperURL  = "KUBEPROXY_TEST_AGENT_URL"
	envHelperID   = "KUBEPROXY_TEST_AGENT_ID"
	envHelperKube = "KUBEPROXY_TEST_AGENT_KUBECONFIG"
	envHelperTok  = "KUBEPROXY_TEST_AGENT_TOKEN"
)

// runAgentHelper is the agent's proxy path in a process of its own: the
// control-plane client and kubeproxy, wired as the daemon wires them, so a
// test can read that process's memory from /proc. It runs until SIGTERM.
func runAgentHelper() int {
	rc, err := clientcmd.BuildConfigFromFlags("", os.Getenv(envHelperKube))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	rc.BearerToken = os.Getenv(envHelperTok)
	cfg := config.Default()
	cfg.PipeOps.APIURL = os.Getenv(envHelperURL)
	cfg.PipeOps.Token = stackToken
	st, _ := state.Open("", nil)
	p, err := kubeproxy.New(kubeproxy.Options{RESTConfig: func() *rest.Config { return rc }, Registerer: prometheus.NewRegistry()})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	cp, err := controlplane.New(controlplane.Options{Config: cfg, AgentID: os.Getenv(envHelperID), State: st,
		Health: health.New(nil), Cluster: stubCluster{}, Log: slog.New(slog.DiscardHandler), K3sTokenPath: "/nonexistent"})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	cp.Register(p)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	fmt.Println("agent helper running")
	_ = cp.Run(ctx)
	return 0
}

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
	identity := serviceAccountIdentity(t, env, "proxy", configMapRules)

	s := newPlane(t)
	agentID := fmt.Sprintf("proxy-mem-%d", time.Now().UnixNano())
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), envHelper+"=1", envHelperURL+"="+s.base, envHelperID+"="+agentID,
		envHelperKube+"="+env.Kubeconfig, envHelperTok+"="+identity.BearerToken, "GOMAXPROCS=2")
	cmd.Stderr = os.Stderr
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	})
	go func() { _, _ = io.Copy(io.Discard, out) }()
	s.waitGateway(t, agentID)

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
	before, _ := rssKiB(t, cmd.Process.Pid)
	n := get()
	_, peak := rssKiB(t, cmd.Process.Pid)
	growth := peak - before
	t.Logf("listed %d bytes through the agent; agent RSS %d KiB before, peak %d KiB (growth %d KiB)", n, before, peak, growth)
	if n < 50_000_000 {
		t.Fatalf("the list was %d bytes; want at least 50 MB", n)
	}
	if growth > 20<<10 {
		t.Errorf("the agent's RSS grew by %d KiB while streaming %d bytes; want at most 20 MiB", growth, n)
	}
}
