package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/devplane"
)

func init() { benches["control"] = benchControl }

const ctlToken = "bench-control-token"

// benchControl runs the real pipeops-agent (default configuration: 30 s
// heartbeats, 1 s base backoff) against the real pipeops-devplane binary
// and a real API server, with a counting TCP relay between them. It prints
// the idle control traffic in bytes/s (target ≤ 500), the agent's idle RSS
// (target ≤ 40 MiB), and, over several devplane restarts, the time from the
// devplane listening again to the agent being registered and heartbeating
// (target ≤ 1.5 s at the base backoff). It asserts nothing.
func benchControl(args []string) error {
	fs := flag.NewFlagSet("control", flag.ContinueOnError)
	idle := fs.Duration("idle", 60*time.Second, "idle measurement window")
	cycles := fs.Int("cycles", 3, "devplane restarts to time")
	kubeconfig := fs.String("kubeconfig", os.Getenv("PIPEOPS_TEST_KUBECONFIG"), "admin kubeconfig of a running cluster (default: start one with scripts/k8s/cluster.sh)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "bench-control-")
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
	for _, b := range []string{"pipeops-agent", "pipeops-devplane"} {
		// Built as releases are (stripped, static): RSS depends on it.
		build := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", filepath.Join(dir, b), "./cmd/"+b)
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			return fmt.Errorf("build %s (run from the repository root): %w\n%s", b, err, out)
		}
	}
	dpPort, relayPort, agentPort := ctlFreePort(), ctlFreePort(), ctlFreePort()
	dp := &ctlDevplane{bin: filepath.Join(dir, "pipeops-devplane"), port: dpPort, public: fmt.Sprintf("http://127.0.0.1:%d", relayPort)}
	if err := dp.start(); err != nil {
		return err
	}
	defer dp.kill()
	relay, err := newCtlRelay(fmt.Sprintf("127.0.0.1:%d", relayPort), fmt.Sprintf("127.0.0.1:%d", dpPort))
	if err != nil {
		return err
	}
	defer relay.ln.Close()

	yaml := fmt.Sprintf("version: 1\nagent:\n  name: bench\n  port: %d\n  state_dir: %s\n  socket: %s\npipeops:\n  api_url: %s\nkubernetes:\n  kubeconfig: %s\n",
		agentPort, filepath.Join(dir, "state"), filepath.Join(dir, "a.sock"), dp.public, *kubeconfig)
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

	// Idle traffic and RSS: let the start-up work (route sync, tunnel
	// hello) settle, then count every byte through the relay.
	time.Sleep(5 * time.Second)
	in0, out0 := relay.toAgent.Load(), relay.fromAgent.Load()
	time.Sleep(*idle)
	in, out := float64(relay.toAgent.Load()-in0), float64(relay.fromAgent.Load()-out0)
	secs := idle.Seconds()
	rss, _ := sseRSS(agent.Process.Pid)
	fmt.Printf("idle control traffic: %.1f B/s (agent→cp %.1f B/s, cp→agent %.1f B/s) over %s (target ≤ 500 B/s)\n",
		(in+out)/secs, out/secs, in/secs, *idle)
	heap, sys := ctlMetric(agentPort, "go_memstats_heap_inuse_bytes"), ctlMetric(agentPort, "go_memstats_sys_bytes")
	anon, file := procStatusKB(agent.Process.Pid, "RssAnon:"), procStatusKB(agent.Process.Pid, "RssFile:")
	fmt.Printf("idle agent RSS: %.1f MiB (target ≤ 40 MiB) = %.1f MiB anonymous + %.1f MiB file-backed (clean binary pages); Go heap in use %.1f MiB, Go runtime sys %.1f MiB\n",
		float64(rss)/(1<<20), anon/1024, file/1024, heap/(1<<20), sys/(1<<20))

	var took []time.Duration
	for i := 0; i < *cycles; i++ {
		if i > 0 {
			time.Sleep(31 * time.Second) // one heartbeat interval up: the backoff resets (§8.4)
		}
		dp.kill()
		if err := dp.start(); err != nil {
			return err
		}
		back := time.Now()
		if err := dp.waitHeartbeating(30 * time.Second); err != nil {
			return fmt.Errorf("cycle %d: %w\nagent output:\n%s", i, err, agentOut.String())
		}
		took = append(took, time.Since(back))
		fmt.Printf("restart %d: registered again and heartbeating %s after the devplane listened again\n", i+1, took[i].Round(time.Millisecond))
	}
	if len(took) > 0 {
		fmt.Printf("devplane back → re-registered and heartbeating: median %s, max %s over %d restarts (target ≤ 1.5 s)\n",
			slices.Sorted(slices.Values(took))[len(took)/2].Round(time.Millisecond), slices.Max(took).Round(time.Millisecond), len(took))
	}
	return nil
}

// ctlDevplane is the pipeops-devplane binary on a fixed port.
type ctlDevplane struct {
	bin, public string
	port        int
	token       string   // "" is ctlToken
	extra       []string // more flags
	cmd         *exec.Cmd
}

func (d *ctlDevplane) start() error {
	token := d.token
	if token == "" {
		token = ctlToken
	}
	args := append([]string{"--listen", fmt.Sprintf("127.0.0.1:%d", d.port), "--public-url", d.public, "--token", token, "--log-level", "warn"}, d.extra...)
	d.cmd = exec.Command(d.bin, args...)
	d.cmd.Stderr = os.Stderr
	if err := d.cmd.Start(); err != nil {
		return err
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", d.port)); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(5 * time.Millisecond)
	}
	return fmt.Errorf("devplane did not listen on %d", d.port)
}

func (d *ctlDevplane) kill() {
	if d.cmd != nil {
		_ = d.cmd.Process.Kill()
		_ = d.cmd.Wait()
		d.cmd = nil
	}
}

// waitHeartbeating polls the admin API until a cluster is connected and
// has sent a heartbeat to this devplane process.
func (d *ctlDevplane) waitHeartbeating(within time.Duration) error {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if cs := d.clusters(); len(cs) == 1 && cs[0].Connected && cs[0].Heartbeats > 0 {
			return nil
		}
		time.Sleep(5 * time.Millisecond)
	}
	return fmt.Errorf("no heartbeating cluster within %s", within)
}

// clusters is what the admin API lists (nil while the devplane is down).
func (d *ctlDevplane) clusters() []devplane.ClusterInfo {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/admin/clusters", d.port))
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var cs []devplane.ClusterInfo
	_ = json.NewDecoder(resp.Body).Decode(&cs)
	return cs
}

// heartbeats, registrations and connected describe the single cluster.
func (d *ctlDevplane) heartbeats() int {
	if cs := d.clusters(); len(cs) == 1 {
		return cs[0].Heartbeats
	}
	return 0
}

func (d *ctlDevplane) registrations() int {
	if cs := d.clusters(); len(cs) == 1 {
		return cs[0].Registrations
	}
	return 0
}

func (d *ctlDevplane) connected() bool {
	cs := d.clusters()
	return len(cs) == 1 && cs[0].Connected && cs[0].Mode == devplane.KindGateway
}

// forget deletes a cluster record.
func (d *ctlDevplane) forget(id string) {
	req, _ := http.NewRequest(http.MethodDelete, fmt.Sprintf("http://127.0.0.1:%d/admin/clusters/%s", d.port, id), nil)
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
	}
}

// drop ends every session without a close frame.
func (d *ctlDevplane) drop() {
	if resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/admin/drop", d.port), "", nil); err == nil {
		resp.Body.Close()
	}
}

// ctlRelay forwards TCP to the devplane and counts bytes each way.
type ctlRelay struct {
	ln                 net.Listener
	toAgent, fromAgent atomic.Int64
}

func newCtlRelay(listen, target string) (*ctlRelay, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, err
	}
	r := &ctlRelay{ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go r.pipe(c, target)
		}
	}()
	return r, nil
}

func (r *ctlRelay) pipe(c net.Conn, target string) {
	defer c.Close()
	u, err := net.Dial("tcp", target)
	if err != nil {
		return
	}
	defer u.Close()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _, _ = io.Copy(ctlCounter{u, &r.fromAgent}, c); u.Close() }()
	go func() { defer wg.Done(); _, _ = io.Copy(ctlCounter{c, &r.toAgent}, u); c.Close() }()
	wg.Wait()
}

// ctlCounter counts bytes as they pass, so long-lived connections count too.
type ctlCounter struct {
	w io.Writer
	n *atomic.Int64
}

func (c ctlCounter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// ctlMetric reads one unlabelled sample from the agent's /metrics.
func ctlMetric(port int, name string) float64 {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

func ctlFreePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// procStatusKB reads one kB field of /proc/<pid>/status (0 when absent).
func procStatusKB(pid int, field string) float64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == field {
			v, _ := strconv.ParseFloat(f[1], 64)
			return v
		}
	}
	return 0
}
