package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/pipeops/pipeops-vm-agent/internal/devplane"
	"github.com/pipeops/pipeops-vm-agent/internal/kube"
)

func init() { benches["failover"] = benchFailover }

const foToken = "bench-failover-token"

// benchFailover runs three real agents with ha.enabled (one per simulated
// server node: own state, ports and agent id) against the real devplane and
// a real cluster, under a proxied load through the control plane's front
// door, and kills the leader with kill -9 again and again; then stops it
// gracefully (SIGTERM, as systemctl stop does). It prints the lease
// settings, the time from each kill to the new leader's first successful
// proxied call (median, max), the calls that failed without an error (a
// hang past the deadline or a 200 with a body that is not the object), and
// the moments when two agents had a link up at once, sampled every 50 ms
// from each agent's /metrics. -short (CI) fails only on counts: two links
// up at once, more than one cluster or registration, wire violations.
func benchFailover(args []string) error {
	fs := flag.NewFlagSet("failover", flag.ContinueOnError)
	kills := fs.Int("kills", 10, "leader kills (kill -9)")
	stops := fs.Int("stops", 5, "graceful leader stops (SIGTERM)")
	lease := fs.Duration("lease", 0, "ha.lease_duration (default: the agent's, 10s)")
	renew := fs.Duration("renew", 0, "ha.renew_deadline (default 7s)")
	retry := fs.Duration("retry", 0, "ha.retry_period (default 1s)")
	conc := fs.Int("c", 8, "concurrent proxied callers")
	short := fs.Bool("short", false, "2 kills and 2 stops with a 3s/2s/500ms lease")
	cluster := fs.String("cluster", "", "folder of a running cluster started by scripts/k8s/cluster.sh (FULL) to use (default: start one)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *short {
		*kills, *stops = 2, 2
		if *lease == 0 {
			*lease, *renew, *retry = 3*time.Second, 2*time.Second, 500*time.Millisecond
		}
	}
	h, err := newFailoverHarness(*cluster, *lease, *renew, *retry)
	if err != nil {
		return err
	}
	defer h.close()
	fmt.Printf("failover: 3 agents (ha.enabled), pipeops-devplane and kube-apiserver on 127.0.0.1; lease %s\n", h.leaseText())

	load := h.startLoad(*conc)
	defer load.stop()
	watch := h.watchLinks()
	defer watch.stop()
	if err := h.waitServing(load, 120*time.Second); err != nil {
		return err
	}

	killTimes, err := h.cycle(load, *kills, "kill -9", func(a *foAgent) { a.end(syscall.SIGKILL) })
	if err != nil {
		return err
	}
	stopTimes, err := h.cycle(load, *stops, "SIGTERM", func(a *foAgent) { a.end(syscall.SIGTERM) })
	if err != nil {
		return err
	}
	load.stop()
	watch.stop()
	r := load.result()
	cl := h.dp.clusters()
	fmt.Printf("lease settings: %s\n", h.leaseText())
	if len(killTimes) > 0 {
		fmt.Printf("kill -9 of the leader → new leader's first successful proxied call: median %s, max %s over %d kills (target median ≤ 15 s with the default lease)\n",
			fltDur(fltMedian(killTimes)), fltDur(slices.Max(killTimes)), len(killTimes))
	}
	if len(stopTimes) > 0 {
		fmt.Printf("graceful stop of the leader → new leader's first successful proxied call: median %s, max %s over %d stops (target ≤ 2 s)\n",
			fltDur(fltMedian(stopTimes)), fltDur(slices.Max(stopTimes)), len(stopTimes))
	}
	fmt.Printf("proxied calls (c=%d): %d ok, %d failed with an error, %d failed without an error (target 0: hung past the 15 s deadline, or a 200 that is not the object)\n",
		*conc, r.ok, r.failedClean, r.silent)
	for _, w := range r.why {
		fmt.Printf("  failed without an error: %s\n", w)
	}
	fmt.Printf("moments with two links up at once: %d of %d samples (target 0)\n", watch.double.Load(), watch.samples.Load())
	regs := 0
	if len(cl) == 1 {
		regs = cl[0].Registrations
	}
	fmt.Printf("control plane: %d cluster(s), %d registration(s) (target 1 and 1: every failover resumed with the shared identity)\n", len(cl), regs)
	var wr devplane.WireReport
	if err := h.getJSON("/admin/wire", &wr); err != nil {
		return fmt.Errorf("read the wire report: %w", err)
	}
	fmt.Printf("wire check: %d violation(s) (target 0)\n", len(wr.Violations))
	if !*short {
		return nil
	}
	// CI asserts the counts that do not depend on timing.
	var off []string
	if n := watch.double.Load(); n > 0 {
		off = append(off, fmt.Sprintf("%d moments with two links up", n))
	}
	if len(cl) != 1 || regs != 1 {
		off = append(off, fmt.Sprintf("%d clusters and %d registrations (want 1 and 1)", len(cl), regs))
	}
	if len(wr.Violations) > 0 {
		off = append(off, fmt.Sprintf("%d wire violations", len(wr.Violations)))
	}
	if len(off) > 0 {
		return fmt.Errorf("off target: %s", strings.Join(off, "; "))
	}
	fmt.Println("failover: every count on target")
	return nil
}

type foHarness struct {
	dir, bin, clusterDir, kubeconfig, ns string
	stopCluster                          func() // nil when the cluster is not ours
	lease, renew, retry                  time.Duration
	dp                                   *ctlDevplane
	agents                               []*foAgent
	cs                                   kubernetes.Interface
}

func newFailoverHarness(clusterDir string, lease, renew, retry time.Duration) (*foHarness, error) {
	dir, err := os.MkdirTemp("", "bench-failover-")
	if err != nil {
		return nil, err
	}
	h := &foHarness{dir: dir, bin: filepath.Join(dir, "bin"), lease: lease, renew: renew, retry: retry}
	ok := false
	defer func() {
		if !ok {
			h.close()
		}
	}()
	for _, b := range []string{"pipeops-agent", "pipeops-devplane"} {
		build := exec.Command("go", "build", "-o", filepath.Join(h.bin, b), "./cmd/"+b)
		if out, err := build.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("build %s (run from the repository root): %w\n%s", b, err, out)
		}
	}
	h.clusterDir = clusterDir
	if h.clusterDir == "" {
		h.clusterDir = filepath.Join(dir, "k8s")
		if h.stopCluster, err = startCluster(h.clusterDir, true); err != nil {
			return nil, err
		}
	}
	h.kubeconfig = filepath.Join(h.clusterDir, "admin.kubeconfig")
	cfg, err := clientcmd.BuildConfigFromFlags("", h.kubeconfig)
	if err != nil {
		return nil, err
	}
	if h.cs, err = kubernetes.NewForConfig(cfg); err != nil {
		return nil, err
	}
	h.ns = fmt.Sprintf("bench-failover-%d", time.Now().Unix()%100000)
	dpPort := ctlFreePort()
	h.dp = &ctlDevplane{bin: filepath.Join(h.bin, "pipeops-devplane"), port: dpPort, public: fmt.Sprintf("http://127.0.0.1:%d", dpPort), token: foToken}
	if err := h.dp.start(); err != nil {
		return nil, err
	}
	for i := range 3 {
		a := h.newAgent(fmt.Sprintf("node-%c", 'a'+i))
		if err := a.start(); err != nil {
			return nil, err
		}
		h.agents = append(h.agents, a)
	}
	ok = true
	return h, nil
}

func (h *foHarness) leaseText() string {
	d := func(v, def time.Duration) string {
		if v == 0 {
			return def.String() + " (default)"
		}
		return v.String()
	}
	return fmt.Sprintf("lease_duration %s, renew_deadline %s, retry_period %s",
		d(h.lease, 10*time.Second), d(h.renew, 7*time.Second), d(h.retry, time.Second))
}

func (h *foHarness) close() {
	for _, a := range h.agents {
		a.end(syscall.SIGTERM)
	}
	if h.dp != nil {
		h.dp.kill()
	}
	if h.cs != nil && h.ns != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, _ = kube.RemoveIdentity(ctx, h.cs, kube.Names{Namespace: h.ns, ClusterRole: "pipeops-agent-" + h.ns})
		_ = h.cs.CoreV1().Namespaces().Delete(ctx, h.ns, metav1.DeleteOptions{})
		cancel()
	}
	if h.stopCluster != nil {
		h.stopCluster()
	}
	os.RemoveAll(h.dir)
}

func (h *foHarness) getJSON(path string, v any) error {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d%s", h.dp.port, path))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(v)
}

func (h *foHarness) clusterID() string {
	if cs := h.dp.clusters(); len(cs) == 1 {
		return cs[0].ID
	}
	return ""
}

// leader is the agent whose link is up (nil when none or several).
func (h *foHarness) leader() *foAgent {
	var out *foAgent
	for _, a := range h.agents {
		if a.linkUp() {
			if out != nil {
				return nil
			}
			out = a
		}
	}
	return out
}

// waitServing waits for one leader and proxied calls that succeed.
func (h *foHarness) waitServing(l *foLoad, within time.Duration) error {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if h.leader() != nil && l.okSince(time.Now().Add(-500*time.Millisecond)) {
			return nil
		}
		time.Sleep(50 * time.Millisecond) // polling a bench, not a test
	}
	var b strings.Builder
	for _, a := range h.agents {
		s := a.out.String()
		fmt.Fprintf(&b, "%s (tail):\n%s\n", a.name, s[max(0, len(s)-3000):])
	}
	return fmt.Errorf("no leader serving proxied calls within %s\n%s", within, b.String())
}

// cycle ends the leader n times with end, measuring from the end to the
// first successful proxied call that started after it, then starts the old
// leader again as a standby.
func (h *foHarness) cycle(l *foLoad, n int, how string, end func(*foAgent)) ([]time.Duration, error) {
	var took []time.Duration
	for i := range n {
		if err := h.waitServing(l, 120*time.Second); err != nil {
			return took, err
		}
		lead := h.leader()
		t0 := time.Now()
		end(lead) // returns once the process has exited
		// The new leader's calls: those that started after the old
		// leader was gone (a graceful stop serves in-flight calls first).
		gone := time.Now()
		deadline := t0.Add(120 * time.Second)
		var first time.Time
		for time.Now().Before(deadline) {
			if first = l.firstOKStartedAfter(gone); !first.IsZero() {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if first.IsZero() {
			return took, fmt.Errorf("%s %d: no successful proxied call within 120 s", how, i+1)
		}
		d := first.Sub(t0)
		took = append(took, d)
		next := h.leader()
		name := "?"
		if next != nil {
			name = next.name
		}
		fmt.Printf("%s %d: %s → %s, first successful proxied call %s later\n", how, i+1, lead.name, name, d.Round(time.Millisecond))
		if err := lead.start(); err != nil {
			return took, err
		}
	}
	return took, nil
}

// ---- agents ----------------------------------------------------------------

type foAgent struct {
	agentProcess
	name, dir string
	port      int
}

func (h *foHarness) newAgent(name string) *foAgent {
	a := &foAgent{agentProcess: agentProcess{bin: filepath.Join(h.bin, "pipeops-agent"), out: &fltOutput{}}, name: name, dir: filepath.Join(h.dir, name), port: ctlFreePort()}
	_ = os.MkdirAll(a.dir, 0o700)
	a.cfg = filepath.Join(a.dir, "agent.yaml")
	a.env = append(os.Environ(), "PIPEOPS_TOKEN="+foToken, "PIPEOPS_LOG_FORMAT=json", "NOTIFY_SOCKET=")
	leaseLines := ""
	for k, v := range map[string]time.Duration{"lease_duration": h.lease, "renew_deadline": h.renew, "retry_period": h.retry} {
		if v > 0 {
			leaseLines += fmt.Sprintf("  %s: %s\n", k, v)
		}
	}
	yaml := fmt.Sprintf(`version: 1
agent:
  name: bench-failover
  id: agent-%s
  port: %d
  state_dir: %s
  socket: %s
  heartbeat_interval: 1s
  public_ip_services: []
pipeops:
  api_url: %s
kubernetes:
  kubeconfig: %s
  namespace: %s
ha:
  enabled: true
  identity: %s
%s`, name, a.port, filepath.Join(a.dir, "state"), filepath.Join(a.dir, "a.sock"), h.dp.public, h.kubeconfig, h.ns, name, leaseLines)
	_ = os.WriteFile(a.cfg, []byte(yaml), 0o600)
	return a
}

// linkUp reads the agent's own view: its control-plane link is connected.
func (a *foAgent) linkUp() bool {
	if a.pid() == 0 {
		return false
	}
	resp, err := fltNoKeepAlive.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", a.port))
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return strings.Contains(string(b), `pipeops_agent_controlplane_connection_state{state="connected"} 1`)
}

// ---- the two-links watch ----------------------------------------------------

type foWatch struct {
	samples, double atomic.Int64
	stopOnce        sync.Once
	quit            chan struct{}
	done            chan struct{}
}

func (h *foHarness) watchLinks() *foWatch {
	w := &foWatch{quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-w.quit:
				return
			case <-t.C:
			}
			up := 0
			for _, a := range h.agents {
				if a.linkUp() {
					up++
				}
			}
			w.samples.Add(1)
			if up > 1 {
				w.double.Add(1)
			}
		}
	}()
	return w
}

func (w *foWatch) stop() { w.stopOnce.Do(func() { close(w.quit); <-w.done }) }

// ---- the proxied load ---------------------------------------------------------

type foLoad struct {
	h        *foHarness
	quit     chan struct{}
	wg       sync.WaitGroup
	stopOnce sync.Once
	mu       sync.Mutex
	oks      []time.Time // start times of successful calls, in completion order
	okEnds   []time.Time
	ok       int
	failed   int
	silent   int
	why      []string // the first silent failures, for the report
}

type foResult struct {
	ok, failedClean, silent int
	why                     []string
}

var foClient = &http.Client{Timeout: 15 * time.Second}

func (h *foHarness) startLoad(conc int) *foLoad {
	l := &foLoad{h: h, quit: make(chan struct{})}
	for range conc {
		l.wg.Add(1)
		go l.caller()
	}
	return l
}

func (l *foLoad) caller() {
	defer l.wg.Done()
	for {
		select {
		case <-l.quit:
			return
		default:
		}
		id := l.h.clusterID()
		if id == "" {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		start := time.Now()
		resp, err := foClient.Get(fmt.Sprintf("http://127.0.0.1:%d/clusters/%s/k8s/api/v1/namespaces/default", l.h.dp.port, id))
		var body []byte
		code := 0
		if err == nil {
			code = resp.StatusCode
			body, err = io.ReadAll(resp.Body) // a response cut short is an error the caller sees
			resp.Body.Close()
		}
		end := time.Now()
		l.mu.Lock()
		switch {
		case err != nil && errors.Is(err, context.DeadlineExceeded) || err != nil && strings.Contains(err.Error(), "Client.Timeout"):
			l.silent++ // hung past the deadline without an answer
			l.note(fmt.Sprintf("%s: hung %s: %v", start.Format("15:04:05.000"), end.Sub(start).Round(time.Millisecond), err))
		case err != nil:
			l.failed++ // the connection was refused or reset: an error the caller sees
		case code == http.StatusOK && strings.Contains(string(body), `"name":"default"`):
			l.ok++
			l.oks = append(l.oks, start)
			l.okEnds = append(l.okEnds, end)
		case code == http.StatusOK:
			l.silent++ // a 200 that is not the object
			l.note(fmt.Sprintf("%s: 200 after %s with %q", start.Format("15:04:05.000"), end.Sub(start).Round(time.Millisecond), body[:min(len(body), 120)]))
		default:
			l.failed++ // an error status with its message
		}
		l.mu.Unlock()
		if code != http.StatusOK {
			time.Sleep(50 * time.Millisecond) // no busy loop while nobody leads
		}
	}
}

func (l *foLoad) note(s string) {
	if len(l.why) < 5 {
		l.why = append(l.why, s)
	}
}

// firstOKStartedAfter is when the first successful call that started
// after t completed (zero when none yet).
func (l *foLoad) firstOKStartedAfter(t time.Time) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	var first time.Time
	for i := len(l.oks) - 1; i >= 0 && !l.okEnds[i].Before(t); i-- { // ends are in completion order
		if l.oks[i].After(t) && (first.IsZero() || l.okEnds[i].Before(first)) {
			first = l.okEnds[i]
		}
	}
	return first
}

func (l *foLoad) okSince(t time.Time) bool { return !l.firstOKStartedAfter(t).IsZero() }

func (l *foLoad) stop() {
	l.stopOnce.Do(func() { close(l.quit); l.wg.Wait() })
}

func (l *foLoad) result() foResult {
	l.mu.Lock()
	defer l.mu.Unlock()
	return foResult{ok: l.ok, failedClean: l.failed, silent: l.silent, why: slices.Clone(l.why)}
}
