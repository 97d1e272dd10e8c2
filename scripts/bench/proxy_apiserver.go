package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/pipeops/pipeops-vm-agent/internal/devplane"
)

// benchProxyAPIServer measures small GETs through the real path: HTTP
// client → pipeops-devplane's front door → WebSocket → the real
// pipeops-agent (default configuration, info logging) → client-go's
// transport (TLS, HTTP/2) → the real kube-apiserver. The agent and the
// devplane are separate processes built from this tree, so the CPU each
// spends comes from its own /proc/<pid>/stat; the API server's pid comes
// from the cluster folder. Every (path, response mode) pair is run for
// each agent binary, back to back in the same run: -baseline adds a second
// agent (for example one built from main) measured the same way. The
// agent's own time per request comes from its
// pipeops_agent_proxy_agent_seconds histogram (the difference over the
// measured run). It asserts nothing.
func benchProxyAPIServer(o apiserverOptions) error {
	conc, dur := o.conc, o.dur
	kubeconfig, agentBin, baseline, profile, paths, modes := &o.kubeconfig, &o.agent, &o.baseline, &o.profile, &o.paths, &o.modes
	dir, err := os.MkdirTemp("", "bench-proxy-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if *kubeconfig == "" {
		fmt.Println("starting a test cluster in", dir)
		stop, err := startCluster(filepath.Join(dir, "k8s"), false)
		if err != nil {
			return err
		}
		defer stop()
		*kubeconfig = filepath.Join(dir, "k8s", "admin.kubeconfig")
	}
	apiPid := readPid(filepath.Join(filepath.Dir(*kubeconfig), "kube-apiserver.pid"))
	if err := ensureBenchConfigMap(*kubeconfig); err != nil {
		return err
	}
	bins := []string{"pipeops-devplane"}
	if *agentBin == "" && *profile == "" {
		bins = append(bins, "pipeops-agent")
		*agentBin = filepath.Join(dir, "pipeops-agent")
	}
	for _, b := range bins {
		build := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", filepath.Join(dir, b), "./cmd/"+b)
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			return fmt.Errorf("build %s (run from the repository root): %w\n%s", b, err, out)
		}
	}
	dp := &ctlDevplane{bin: filepath.Join(dir, "pipeops-devplane"), port: ctlFreePort()}
	dp.public = fmt.Sprintf("http://127.0.0.1:%d", dp.port)
	if err := dp.start(); err != nil {
		return err
	}
	defer dp.kill()

	type subject struct {
		name  string
		agent *benchAgent
	}
	var subjects []subject
	mk := func(name, bin string, prof string) error {
		a, err := startBenchAgent(filepath.Join(dir, name), bin, prof, dp.public, *kubeconfig)
		if err != nil {
			return err
		}
		subjects = append(subjects, subject{name, a})
		return nil
	}
	if *profile != "" {
		self, err := os.Executable()
		if err != nil {
			return err
		}
		if err := mk("agent", self, *profile); err != nil {
			return err
		}
	} else if err := mk("agent", *agentBin, ""); err != nil {
		return err
	}
	if *baseline != "" {
		if err := mk("baseline", *baseline, ""); err != nil {
			return err
		}
	}
	defer func() {
		for _, s := range subjects {
			s.agent.stop()
		}
	}()
	for _, s := range subjects {
		if err := dp.waitCluster(s.agent, s.name, 90*time.Second); err != nil {
			return fmt.Errorf("%s: %w\nagent output:\n%s", s.name, err, s.agent.out.String())
		}
	}
	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Printf("proxy bench, target apiserver: %d concurrent clients, %s per run, load average %s", conc, dur, load)
	fmt.Println("  CPU ms per request: each process's user+system time over the run ÷ requests answered; agent own p50: its pipeops_agent_proxy_agent_seconds histogram")
	if *profile != "" {
		subjects[0].agent.signal(syscall.SIGUSR1)
	}
	for _, p := range strings.Split(*paths, ",") {
		for _, m := range strings.Split(*modes, ",") {
			for _, s := range subjects {
				a := s.agent
				hdr := http.Header{}
				if m == "buffered" {
					hdr.Set(devplane.ResponseModeHeader, "buffered")
				}
				url := devplane.FrontDoorURL(dp.public, a.clusterID) + p
				_ = proxyLoadHeader(url, hdr, conc, time.Second) // warm-up: connections, HTTP/2, caches
				h0 := a.histogram()
				c0 := [3]float64{procCPU(a.pid()), procCPU(dp.cmd.Process.Pid), procCPU(apiPid)}
				r := proxyLoadHeader(url, hdr, conc, dur)
				c1 := [3]float64{procCPU(a.pid()), procCPU(dp.cmd.Process.Pid), procCPU(apiPid)}
				own := a.histogram().minus(h0)
				n := r.rps * r.elapsed.Seconds()
				perReq := func(i int) float64 { return (c1[i] - c0[i]) * 1000 / n }
				ownP50 := "n/a"
				if own.count > 0 {
					ownP50 = fmt.Sprintf("%.3f ms", own.quantile(0.5)*1000)
				}
				fmt.Printf("  %-8s %-9s %-48s %7.0f req/s  p50 %6.2f ms  p99 %6.2f ms  errors %d\n", s.name, m, p, r.rps, proxyMs(r.p50), proxyMs(r.p99), r.errors)
				fmt.Printf("  %-8s %-9s   CPU ms/request: agent %.3f  devplane %.3f  apiserver %.3f   agent own p50 %s\n", "", "", perReq(0), perReq(1), perReq(2), ownP50)
			}
		}
	}
	if *profile != "" {
		subjects[0].agent.signal(syscall.SIGUSR2)
		fmt.Printf("  profiles: go tool pprof %s; go tool pprof -sample_index=alloc_space -base %s %s\n",
			filepath.Join(*profile, "cpu.pprof"), filepath.Join(*profile, "allocs-start.pprof"), filepath.Join(*profile, "allocs.pprof"))
	}
	fmt.Println("  (targets, issue 19: agent ≤ 0.10 CPU ms per request in both modes; agent own p50 ≤ 1 ms)")
	return nil
}

// ensureBenchConfigMap creates the small ConfigMap the default paths read.
func ensureBenchConfigMap(kubeconfig string) error {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return fmt.Errorf("load %s: %w", kubeconfig, err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "bench-small", Namespace: "default"}, Data: map[string]string{"key": "value"}}
	_, err = cs.CoreV1().ConfigMaps("default").Create(context.Background(), cm, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create ConfigMap default/bench-small: %w", err)
	}
	return nil
}

func readPid(path string) int {
	b, _ := os.ReadFile(path)
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// procCPU is a process's user+system CPU seconds from /proc (0 when unknown).
func procCPU(pid int) float64 {
	if pid <= 0 {
		return 0
	}
	return (&agentProc{cmd: &exec.Cmd{Process: &os.Process{Pid: pid}}}).cpuSeconds()
}

// apiserverOptions are the flags of proxy -target apiserver.
type apiserverOptions struct {
	conc                                               int
	dur                                                time.Duration
	kubeconfig, agent, baseline, profile, paths, modes string
}

func (o *apiserverOptions) flags(fs *flag.FlagSet) {
	fs.StringVar(&o.kubeconfig, "kubeconfig", os.Getenv("PIPEOPS_TEST_KUBECONFIG"), "apiserver: admin kubeconfig of a running test cluster (default: start one with scripts/k8s/cluster.sh)")
	fs.StringVar(&o.agent, "agent", "", "apiserver: pipeops-agent binary to measure (default: build ./cmd/pipeops-agent)")
	fs.StringVar(&o.baseline, "baseline", "", "apiserver: a second pipeops-agent binary measured in the same run (e.g. built from main)")
	fs.StringVar(&o.profile, "profile", "", "apiserver: write CPU and allocation profiles of the agent over the measured runs to this folder (the agent then runs inside the bench binary, built from this tree)")
	fs.StringVar(&o.paths, "paths", "/version,/api/v1/namespaces/default/configmaps/bench-small", "apiserver: paths to GET (comma-separated)")
	fs.StringVar(&o.modes, "modes", "streamed,buffered", "apiserver: response modes (comma-separated: streamed, buffered)")
}

// benchAgent is a real pipeops-agent process with its own state and ports.
type benchAgent struct {
	cmd       *exec.Cmd
	port      int
	clusterID string
	out       *lockedBuffer
}

// lockedBuffer collects a process's output while the bench reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func startBenchAgent(dir, bin, profileDir, api, kubeconfig string) (*benchAgent, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	a := &benchAgent{port: ctlFreePort(), out: &lockedBuffer{}}
	yaml := fmt.Sprintf("version: 1\nagent:\n  name: %s\n  port: %d\n  state_dir: %s\n  socket: %s\npipeops:\n  api_url: %s\nkubernetes:\n  kubeconfig: %s\n",
		filepath.Base(dir), a.port, filepath.Join(dir, "state"), filepath.Join(dir, "a.sock"), api, kubeconfig)
	cfgPath := filepath.Join(dir, "agent.yaml")
	if err := os.WriteFile(cfgPath, []byte(yaml), 0o600); err != nil {
		return nil, err
	}
	args := []string{"run", "--config", cfgPath}
	if profileDir != "" {
		args = append([]string{"proxy-agent-profiled", profileDir}, args...)
	}
	a.cmd = exec.Command(bin, args...)
	// Each agent is its own cluster: the derived agent id is the host's.
	a.cmd.Env = append(os.Environ(), "PIPEOPS_TOKEN="+ctlToken, "PIPEOPS_LOG_FORMAT=json", "NOTIFY_SOCKET=",
		"PIPEOPS_AGENT_ID=bench-"+filepath.Base(dir))
	a.cmd.Stdout, a.cmd.Stderr = a.out, a.out
	if err := a.cmd.Start(); err != nil {
		return nil, err
	}
	return a, nil
}

func (a *benchAgent) pid() int { return a.cmd.Process.Pid }

func (a *benchAgent) stop() {
	_ = a.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { _ = a.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = a.cmd.Process.Kill()
		<-done
	}
}

func (a *benchAgent) signal(s os.Signal) {
	_ = a.cmd.Process.Signal(s)
	time.Sleep(500 * time.Millisecond) // the profile starts or is written
}

// waitCluster waits until the agent named name (its agent.name) is
// connected to the gateway and heartbeating, and records its cluster id.
func (d *ctlDevplane) waitCluster(a *benchAgent, name string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/admin/clusters", d.port))
		if err == nil {
			var cs []devplane.ClusterInfo
			_ = json.NewDecoder(resp.Body).Decode(&cs)
			resp.Body.Close()
			for _, c := range cs {
				if c.Name == name && c.Connected && c.Heartbeats > 0 && c.Mode == devplane.KindGateway {
					a.clusterID = c.ID
					return nil
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("the agent %q was not connected to the devplane gateway and heartbeating within %s", name, within)
}

// hist is a scraped Prometheus histogram: cumulative counts per upper bound.
type hist struct {
	bounds []float64
	counts []float64
	count  float64
}

// histogram scrapes pipeops_agent_proxy_agent_seconds from the agent.
func (a *benchAgent) histogram() hist {
	var h hist
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", a.port))
	if err != nil {
		return h
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(resp.Body)
	const name = "pipeops_agent_proxy_agent_seconds"
	for _, l := range strings.Split(buf.String(), "\n") {
		if rest, ok := strings.CutPrefix(l, name+`_bucket{le="`); ok {
			le, v, _ := strings.Cut(rest, `"} `)
			b, _ := strconv.ParseFloat(le, 64)
			if le == "+Inf" {
				b = math.Inf(1)
			}
			c, _ := strconv.ParseFloat(v, 64)
			h.bounds, h.counts = append(h.bounds, b), append(h.counts, c)
		} else if v, ok := strings.CutPrefix(l, name+"_count "); ok {
			h.count, _ = strconv.ParseFloat(v, 64)
		}
	}
	return h
}

func (h hist) minus(o hist) hist {
	out := hist{bounds: h.bounds, count: h.count - o.count, counts: make([]float64, len(h.counts))}
	for i := range h.counts {
		out.counts[i] = h.counts[i]
		if i < len(o.counts) {
			out.counts[i] -= o.counts[i]
		}
	}
	return out
}

// quantile interpolates linearly inside the bucket, as histogram_quantile does.
func (h hist) quantile(q float64) float64 {
	rank := q * h.count
	prevB, prevC := 0.0, 0.0
	for i, c := range h.counts {
		if c >= rank {
			if math.IsInf(h.bounds[i], 1) {
				return prevB
			}
			if c == prevC {
				return h.bounds[i]
			}
			return prevB + (h.bounds[i]-prevB)*(rank-prevC)/(c-prevC)
		}
		prevB, prevC = h.bounds[i], c
	}
	return prevB
}
