package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/devplane"
)

func init() { benches["relay"] = benchRelay }

// benchRelay measures kubectl port-forward through the agent (real kubectl
// → pipeops-devplane → pipeops-agent → kube-apiserver → the node's kubelet
// API, kwok's) against kubectl port-forward straight to the same API
// server, in the same run, on both of the front door's paths; then it holds
// one kubectl logs -f through the agent and reports that it stayed open and
// how fast appended lines arrived. It asserts nothing.
func benchRelay(args []string) error {
	fs := flag.NewFlagSet("relay", flag.ContinueOnError)
	size := fs.Int("mib", 64, "MiB each way per connection")
	conns := fs.Int("conns", 2, "concurrent connections")
	hold := fs.Duration("hold", 10*time.Minute, "how long to hold kubectl logs -f (0 skips it)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "bench-relay-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	// A cluster of our own: its default port-forward target and log file
	// are ours alone.
	k8s := filepath.Join(dir, "k8s")
	fmt.Println("starting a test cluster with the node's kubelet API in", k8s)
	stop, err := startCluster(k8s, true)
	if err != nil {
		return err
	}
	defer stop()
	env, err := readEnvFile(filepath.Join(k8s, "cluster.env"))
	if err != nil {
		return err
	}
	admin := filepath.Join(k8s, "admin.kubeconfig")
	kubectl := filepath.Join(env["BIN"], "kubectl")

	for _, b := range []string{"pipeops-agent", "pipeops-devplane"} {
		build := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", filepath.Join(dir, b), "./cmd/"+b)
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			return fmt.Errorf("build %s (run from the repository root): %w\n%s", b, err, out)
		}
	}
	dpPort, agentPort := ctlFreePort(), ctlFreePort()
	dp := &ctlDevplane{bin: filepath.Join(dir, "pipeops-devplane"), port: dpPort, public: fmt.Sprintf("http://127.0.0.1:%d", dpPort)}
	if err := dp.start(); err != nil {
		return err
	}
	defer dp.kill()
	yaml := fmt.Sprintf("version: 1\nagent:\n  name: bench\n  port: %d\n  state_dir: %s\n  socket: %s\npipeops:\n  api_url: %s\nkubernetes:\n  kubeconfig: %s\n",
		agentPort, filepath.Join(dir, "state"), filepath.Join(dir, "a.sock"), dp.public, admin)
	cfgPath := filepath.Join(dir, "agent.yaml")
	if err := os.WriteFile(cfgPath, []byte(yaml), 0o600); err != nil {
		return err
	}
	agent := exec.Command(filepath.Join(dir, "pipeops-agent"), "run", "--config", cfgPath)
	agent.Env = append(os.Environ(), "PIPEOPS_TOKEN="+ctlToken, "PIPEOPS_LOG_FORMAT=json", "NOTIFY_SOCKET=")
	var agentOut bytes.Buffer
	agent.Stdout, agent.Stderr = &agentOut, &agentOut
	if err := agent.Start(); err != nil {
		return err
	}
	defer func() { _ = agent.Process.Kill(); _ = agent.Wait() }()
	if err := dp.waitHeartbeating(90 * time.Second); err != nil {
		return fmt.Errorf("%w\nagent output:\n%s", err, agentOut.String())
	}
	id := relayClusterID(dpPort)
	var through [2]string
	for i, o := range []devplane.FrontDoorOptions{{}, {Translated: true}} {
		through[i] = filepath.Join(dir, fmt.Sprintf("through-%d.kubeconfig", i))
		if err := os.WriteFile(through[i], devplane.FrontDoorKubeconfigWith(dp.public, id, "", o), 0o600); err != nil {
			return err
		}
	}

	// The node's port 80 reaches this echo server; the pod exists once.
	echo, err := net.Listen("tcp", "127.0.0.1:"+env["PORTFORWARD_PORT"])
	if err != nil {
		return fmt.Errorf("listen on the cluster's port-forward target: %w", err)
	}
	defer echo.Close()
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	pod := `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"bench","namespace":"default"},"spec":{"nodeName":"kwok-node-0","containers":[{"name":"c","image":"bench.invalid/c"}]}}`
	apply := exec.Command(kubectl, "--kubeconfig", admin, "apply", "-f", "-")
	apply.Stdin = strings.NewReader(pod)
	if out, err := apply.CombinedOutput(); err != nil {
		return fmt.Errorf("create the pod: %w\n%s", err, out)
	}
	if out, err := exec.Command(kubectl, "--kubeconfig", admin, "wait", "--for=condition=Ready", "pod/bench", "--timeout=60s").CombinedOutput(); err != nil {
		return fmt.Errorf("wait for the pod: %w\n%s", err, out)
	}

	fmt.Printf("port-forward, %d connection(s), %d MiB each way on each, SHA-256 checked:\n", *conns, *size)
	direct, err := relayForward(kubectl, admin, *size, *conns, 0)
	if err != nil {
		return fmt.Errorf("direct: %w", err)
	}
	fmt.Printf("  direct to the API server:          %7.1f MiB/s\n", direct.rate)
	for i, name := range []string{"through the agent, raw frames", "through the agent, translated"} {
		r, err := relayForward(kubectl, through[i], *size, *conns, agent.Process.Pid)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		fmt.Printf("  %-34s %7.1f MiB/s = %.2f × direct; agent CPU %.2f s (%.1f ms per MiB)\n",
			name+":", r.rate, r.rate/direct.rate, r.agentCPU, 1000*r.agentCPU/float64(2**size**conns))
	}

	if *hold > 0 {
		return relayHoldLogs(kubectl, through[0], env["NODE_LOG_FILE"], *hold)
	}
	return nil
}

// relayClusterID is the id the devplane gave the bench agent's cluster.
func relayClusterID(dpPort int) string {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/admin/clusters", dpPort))
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var cs []devplane.ClusterInfo
	_ = json.NewDecoder(resp.Body).Decode(&cs)
	if len(cs) == 0 {
		return ""
	}
	return cs[0].ID
}

type relayResult struct {
	rate     float64 // MiB/s, both directions of every connection together
	agentCPU float64 // seconds of agent CPU during the transfer (0 when not measured)
}

var relayForwarding = regexp.MustCompile(`Forwarding from 127\.0\.0\.1:(\d+) -> 80`)

// relayForward runs kubectl port-forward with kubeconfig and moves size MiB
// each way on conns connections at once.
func relayForward(kubectl, kubeconfig string, size, conns, agentPid int) (relayResult, error) {
	cmd := exec.Command(kubectl, "--kubeconfig", kubeconfig, "-n", "default", "port-forward", "bench", ":80")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return relayResult{}, err
	}
	if err := cmd.Start(); err != nil {
		return relayResult{}, err
	}
	defer func() { _ = cmd.Process.Signal(syscall.SIGINT); _ = cmd.Wait() }()
	sc := bufio.NewScanner(out)
	addr := ""
	for sc.Scan() {
		if m := relayForwarding.FindStringSubmatch(sc.Text()); m != nil {
			addr = "127.0.0.1:" + m[1]
			break
		}
	}
	if addr == "" {
		return relayResult{}, fmt.Errorf("kubectl port-forward did not start")
	}
	go func() { _, _ = io.Copy(io.Discard, out) }()
	cpu0 := 0.0
	if agentPid > 0 {
		cpu0, _ = sseCPU(agentPid)
	}
	t0 := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, conns)
	for i := range conns {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = relayEcho(addr, int64(size)<<20, uint64(i)) }()
	}
	wg.Wait()
	el := time.Since(t0)
	for _, err := range errs {
		if err != nil {
			return relayResult{}, err
		}
	}
	r := relayResult{rate: float64(2*size*conns) / el.Seconds()}
	if agentPid > 0 {
		cpu1, _ := sseCPU(agentPid)
		r.agentCPU = cpu1 - cpu0
	}
	return r, nil
}

// relayEcho sends n pseudo-random bytes while reading the echo and
// compares their SHA-256.
func relayEcho(addr string, n int64, seed uint64) error {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	sent, got := sha256.New(), sha256.New()
	werr := make(chan error, 1)
	go func() {
		var key [32]byte
		key[0] = byte(seed)
		_, err := io.Copy(io.MultiWriter(c, sent), io.LimitReader(rand.NewChaCha8(key), n))
		werr <- err
	}()
	if m, err := io.Copy(got, io.LimitReader(c, n)); err != nil || m != n {
		return fmt.Errorf("read %d of %d echoed bytes: %v", m, n, err)
	}
	if err := <-werr; err != nil {
		return err
	}
	if !bytes.Equal(sent.Sum(nil), got.Sum(nil)) {
		return fmt.Errorf("the echoed bytes differ from those sent")
	}
	return nil
}

// relayHoldLogs holds kubectl logs -f through the agent for hold, appending
// a line to the node's log file every 10 s, and reports whether it stayed
// open and the slowest line's delay.
func relayHoldLogs(kubectl, kubeconfig, logFile string, hold time.Duration) error {
	fmt.Printf("holding kubectl logs -f through the agent for %s (a line every 10 s)...\n", hold)
	cmd := exec.Command(kubectl, "--kubeconfig", kubeconfig, "-n", "default", "logs", "-f", "--tail=0", "bench")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	ended := make(chan struct{})
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(ended)
	}()
	time.Sleep(2 * time.Second) // kubectl connected
	start := time.Now()
	var slowest time.Duration
	n, lost := 0, 0
	for time.Since(start) < hold {
		n++
		want := fmt.Sprintf("bench line %d", n)
		f, err := os.OpenFile(logFile, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		written := time.Now()
		fmt.Fprintf(f, "%s stdout F %s\n", written.UTC().Format(time.RFC3339Nano), want)
		f.Close()
		timeout := time.After(10 * time.Second)
	wait:
		for {
			select {
			case l := <-lines:
				if l == want {
					slowest = max(slowest, time.Since(written))
					break wait
				}
			case <-ended:
				fmt.Printf("logs -f ENDED after %s: %d of %d lines arrived\n", time.Since(start).Round(time.Second), n-1-lost, n)
				return nil
			case <-timeout:
				lost++
				break wait
			}
		}
		time.Sleep(time.Until(written.Add(10 * time.Second)))
	}
	_ = cmd.Process.Signal(syscall.SIGINT)
	_ = cmd.Wait()
	fmt.Printf("logs -f stayed open for %s: %d of %d lines arrived, the slowest %s after it was written; ended by Ctrl-C\n",
		time.Since(start).Round(time.Second), n-lost, n, slowest.Round(time.Millisecond))
	return nil
}

// readEnvFile reads KEY=VALUE lines.
func readEnvFile(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			m[k] = v
		}
	}
	return m, nil
}
