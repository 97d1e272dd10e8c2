package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
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
	"syscall"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/devplane"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

func init() { benches["faults"] = benchFaults }

const fltToken = "bench-faults-token"

// benchFaults runs the real agent against the real pipeops-devplane binary
// and its own real cluster (scripts/k8s/cluster.sh, FULL), all
// on 127.0.0.1, and breaks things the way a bad day does:
//
//	F1 kill -9 of the control plane, again and again, under proxied load,
//	   a long watch and a busy tunnel stream;
//	F2 a silent blackhole between agent and control plane, then healed;
//	F3 the API server killed under load, and the agent started while it is down;
//	F4 kill -9 of the agent at random points in its first seconds;
//	F5 a soak under mixed load.
//
// It prints one line per figure, with the target. -short is what CI runs:
// fewer cycles, a 5 s outage, a 10 s soak and no F2, and it fails only on counts
// (requests that hung, agent restarts, panics, unclear errors, state files
// that do not parse, leaked goroutines); timings are printed, not asserted.
func benchFaults(args []string) error {
	fs := flag.NewFlagSet("faults", flag.ContinueOnError)
	short := fs.Bool("short", false, "CI mode: few cycles, short outage and soak; fail on counts only")
	kills := fs.Int("kills", 50, "F1: control-plane kills")
	agentKills := fs.Int("agent-kills", 20, "F4: agent kills")
	outage := fs.Duration("outage", 30*time.Second, "F3: how long the API server stays down")
	soak := fs.Duration("soak", 30*time.Minute, "F5: soak duration")
	only := fs.String("only", "F1,F2,F3,F4,F5", "comma-separated figures to run")
	cluster := fs.String("cluster", "", "folder of a running cluster started by scripts/k8s/cluster.sh (FULL) to use; F3 stops and restarts its API server (default: start one)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *short {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		if !set["kills"] {
			*kills = 5
		}
		if !set["agent-kills"] {
			*agentKills = 5
		}
		if !set["outage"] {
			*outage = 5 * time.Second
		}
		if !set["soak"] {
			*soak = 10 * time.Second
		}
		if !set["only"] {
			// F2's detection takes 25 s by design (2.5 ping intervals);
			// controlplane's TestASilentBlackhole… checks it with fast pings.
			*only = "F1,F3,F4,F5"
			fmt.Println("F2 not run in -short (it waits 25 s by design; internal/controlplane tests the detection with fast pings)")
		}
	}
	h, err := newFaultHarness(*short, *cluster)
	if err != nil {
		return err
	}
	defer h.close()
	fmt.Printf("faults: agent, pipeops-devplane and kube-apiserver on 127.0.0.1 (heartbeat 1 s, default backoff 1 s ×2 ≤ 15 s ±25 %%)\n")
	run := func(name string, fn func() error) error {
		if !slices.Contains(strings.Split(*only, ","), name) {
			return nil
		}
		start := time.Now()
		err := fn()
		fmt.Printf("%s took %s\n", name, time.Since(start).Round(100*time.Millisecond))
		return err
	}
	steps := []struct {
		name string
		fn   func() error
	}{
		{"F1", func() error { return h.f1(*kills) }},
		{"F2", h.f2},
		{"F3", func() error { return h.f3(*outage) }},
		{"F4", func() error { return h.f4(*agentKills) }},
		{"F5", func() error { return h.f5(*soak) }},
	}
	for _, s := range steps {
		if err := run(s.name, s.fn); err != nil {
			return fmt.Errorf("%s: %w\nagent output (tail):\n%s", s.name, err, h.agentTail())
		}
	}
	if len(h.failed) > 0 {
		return fmt.Errorf("%d count(s) off target:\n  %s", len(h.failed), strings.Join(h.failed, "\n  "))
	}
	fmt.Println("faults: every count on target")
	return nil
}

// faultHarness owns the processes, the relay and the load.
type faultHarness struct {
	short      bool
	dir        string
	bin        string
	clusterDir string
	ownCluster bool
	kubeconfig string
	dp         *ctlDevplane
	relay      *testbin.Blackhole
	echo       net.Listener
	fwdPort    int
	agent      *fltAgent
	failed     []string
}

func newFaultHarness(short bool, clusterDir string) (*faultHarness, error) {
	dir, err := os.MkdirTemp("", "bench-faults-")
	if err != nil {
		return nil, err
	}
	h := &faultHarness{short: short, dir: dir, bin: filepath.Join(dir, "bin")}
	t0 := time.Now()
	ok := false
	defer func() {
		if !ok {
			h.close()
		}
	}()
	for _, b := range []string{"pipeops-agent", "pipeops-devplane"} {
		args := []string{"build", "-o", filepath.Join(h.bin, b), "./cmd/" + b}
		if !short { // as releases are built: RSS depends on it
			args = []string{"build", "-trimpath", "-ldflags", "-s -w", "-o", filepath.Join(h.bin, b), "./cmd/" + b}
		}
		build := exec.Command("go", args...)
		if !short {
			build.Env = append(os.Environ(), "CGO_ENABLED=0")
		}
		if out, err := build.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("build %s (run from the repository root): %w\n%s", b, err, out)
		}
	}
	// Its own cluster (FULL: with the token controller of a real cluster,
	// so the first registration does not wait for one): F3 stops and
	// starts its API server.
	h.clusterDir, h.ownCluster = clusterDir, clusterDir == ""
	if h.ownCluster {
		h.clusterDir = filepath.Join(dir, "k8s")
		if _, err := startCluster(h.clusterDir, true); err != nil {
			return nil, err
		}
	}
	h.kubeconfig = filepath.Join(h.clusterDir, "admin.kubeconfig")
	t1 := time.Now()

	// The tunnel's target: an echo server the agent reaches as forward "echo".
	if h.echo, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		return nil, err
	}
	go fltEcho(h.echo)
	dpPort, relayPort := ctlFreePort(), ctlFreePort()
	h.fwdPort = ctlFreePort()
	public := fmt.Sprintf("http://127.0.0.1:%d", relayPort)
	h.dp = &ctlDevplane{bin: filepath.Join(h.bin, "pipeops-devplane"), port: dpPort, public: public,
		extra: []string{"--forward", fmt.Sprintf("127.0.0.1:%d=echo", h.fwdPort)}, token: fltToken}
	if err := h.dp.start(); err != nil {
		return nil, err
	}
	if h.relay, err = testbin.NewBlackhole(fmt.Sprintf("127.0.0.1:%d", relayPort), fmt.Sprintf("127.0.0.1:%d", dpPort)); err != nil {
		return nil, err
	}
	h.agent = h.newAgent("bench-faults", filepath.Join(dir, "agent"), "")
	if err := h.agent.start(); err != nil {
		return nil, err
	}
	if err := h.dp.waitHeartbeating(120 * time.Second); err != nil {
		return nil, fmt.Errorf("%w\nagent output:\n%s", err, h.agent.out.String())
	}
	fmt.Printf("setup: binaries and cluster %s, agent registered %s later \n",
		t1.Sub(t0).Round(100*time.Millisecond), time.Since(t1).Round(100*time.Millisecond))
	ok = true
	return h, nil
}

func (h *faultHarness) close() {
	if h.agent != nil {
		h.agent.stop()
	}
	if h.dp != nil {
		h.dp.kill()
	}
	if h.relay != nil {
		h.relay.Close()
	}
	if h.echo != nil {
		h.echo.Close()
	}
	if h.clusterDir != "" && h.ownCluster {
		_ = exec.Command("scripts/k8s/cluster.sh", "stop", h.clusterDir).Run()
	}
	os.RemoveAll(h.dir)
}

// check records a count that is off target; in -short mode it fails the run.
func (h *faultHarness) check(ok bool, format string, a ...any) {
	if !ok {
		h.failed = append(h.failed, fmt.Sprintf(format, a...))
	}
}

func (h *faultHarness) agentTail() string {
	if h.agent == nil {
		return ""
	}
	s := h.agent.out.String()
	return s[max(0, len(s)-4000):]
}

// clusterID is the cluster the devplane knows (one agent at a time).
func (h *faultHarness) clusterID() string {
	cs := h.dp.clusters()
	if len(cs) == 0 {
		return ""
	}
	return cs[0].ID
}

// ---- F1 -------------------------------------------------------------------

func (h *faultHarness) f1(kills int) error {
	load := h.startLoad(16, true, true)
	defer load.stop()
	// The baseline comes after the first fifth of the kills: by then the
	// heap has reached its working size under this load (RSS grows over
	// the first ten or so cycles, then stays flat), so what remains is
	// what a leak per reconnect would add.
	warm := max(1, kills/5)
	var base idleSnapshot
	var took []time.Duration
	for i := 0; i < kills; i++ {
		d, err := h.killDevplane()
		if err != nil {
			return fmt.Errorf("kill %d: %w", i+1, err)
		}
		took = append(took, d)
		// Up for more than one heartbeat interval: the backoff resets (§8.4),
		// as it would between real outages.
		time.Sleep(1500 * time.Millisecond)
		if i+1 == warm {
			base = h.idle(load)
		}
	}
	end := h.idle(load)
	load.stop()
	r := load.result()
	med, mx := fltMedian(took), slices.Max(took)
	fmt.Printf("F1 %d × kill -9 of the control plane under c=16 proxied load, a watch and a busy tunnel stream\n", kills)
	fmt.Printf("F1 recovery after each restart: median %s, max %s (target median ≤ 1.5 s, max ≤ 18.75 s = 15 s cap + 25 %% jitter)\n",
		fltDur(med), fltDur(mx))
	fmt.Printf("F1 proxied requests: %d ok, %d failed with an error, %d hung past their %s deadline; watch restarts %d; tunnel %.1f MiB echoed, %d stream errors\n",
		r.ok, r.failed, r.hung, fltDeadline, r.watches, float64(r.tunnelBytes)/(1<<20), r.tunnelErrs)
	if len(r.samples) > 0 {
		fmt.Printf("F1 sample errors: %s\n", strings.Join(r.samples, " | "))
	}
	restarts, panics := h.agent.exits(), h.agent.panics()
	fmt.Printf("F1 agent restarts %d, panics %d (target 0, 0)\n", restarts, panics)
	gr := fltRatio(end.goroutines, base.goroutines)
	fmt.Printf("F1 idle goroutines %d → %d (%+.1f %%), RSS %.1f → %.1f MiB (%+.1f %%) (target ± 5 %%), from kill %d to kill %d; Go heap in use %.1f → %.1f MiB\n",
		base.goroutines, end.goroutines, gr, base.rssMiB, end.rssMiB, fltRatio(end.rssMiB, base.rssMiB), warm, kills, base.heapMiB, end.heapMiB)
	h.check(r.hung == 0, "F1: %d proxied requests hung past their deadline", r.hung)
	h.check(restarts == 0 && panics == 0, "F1: agent restarts %d, panics %d", restarts, panics)
	h.check(fltNoLeak(base.goroutines, end.goroutines), "F1: goroutines leaked: %d → %d", base.goroutines, end.goroutines)
	return nil
}

// killDevplane kills the control plane with SIGKILL, starts it again, and
// returns how long the agent took from the devplane listening to being
// registered and heartbeating again.
func (h *faultHarness) killDevplane() (time.Duration, error) {
	h.dp.kill()
	if err := h.dp.start(); err != nil {
		return 0, err
	}
	back := time.Now()
	if err := h.dp.waitHeartbeating(60 * time.Second); err != nil {
		return 0, err
	}
	return time.Since(back), nil
}

// ---- F2 -------------------------------------------------------------------

func (h *faultHarness) f2() error {
	if err := h.dp.waitHeartbeating(30 * time.Second); err != nil {
		return err
	}
	// A tunnel stream keeps traffic moving; proxied calls would wait on the
	// control plane's own dead session, which measures it, not the agent.
	load := h.startLoad(0, false, true)
	defer load.stop()
	time.Sleep(2 * time.Second)
	h.relay.Hole()
	holed := time.Now()
	detected := time.Duration(0)
	for time.Since(holed) < 90*time.Second {
		if h.agent.metric(`pipeops_agent_controlplane_connection_state{state="connected"}`) == 0 {
			detected = time.Since(holed)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(2 * time.Second) // a reconnect attempt now hangs in the blackhole too
	before := h.dp.heartbeats()
	h.relay.Heal()
	healed := time.Now()
	recovered := time.Duration(0)
	for time.Since(healed) < 90*time.Second {
		if h.dp.heartbeats() > before && h.agent.metric(`pipeops_agent_controlplane_connection_state{state="connected"}`) == 1 {
			recovered = time.Since(healed)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	load.stop()
	fmt.Printf("F2 silent blackhole (the relay stops forwarding, nothing closes): detected after %s (target ≤ 30 s); heartbeating again %s after it healed\n",
		fltDurOr(detected, "never (90 s)"), fltDurOr(recovered, "never (90 s)"))
	h.check(detected > 0, "F2: the blackhole was not detected within 90 s")
	h.check(recovered > 0, "F2: the link did not recover within 90 s of the heal")
	return nil
}

// ---- F3 -------------------------------------------------------------------

func (h *faultHarness) f3(outage time.Duration) error {
	load := h.startLoad(16, false, false)
	defer load.stop()
	time.Sleep(2 * time.Second)
	if out, err := h.cluster("apiserver-stop"); err != nil {
		return fmt.Errorf("stop kube-apiserver: %w\n%s", err, out)
	}
	killed := time.Now()
	load.markOutage(killed)
	time.Sleep(outage)
	if out, err := h.cluster("apiserver-start"); err != nil {
		return fmt.Errorf("start kube-apiserver: %w\n%s", err, out)
	}
	back := time.Now()
	load.markBack(back)
	deadline := time.Now().Add(60 * time.Second)
	for load.firstOKAfterBack().IsZero() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	load.stop()
	r := load.result()
	first := r.firstFailAfterOutage
	fmt.Printf("F3 kube-apiserver killed for %s under c=16 proxied load: first clear error %s after the kill (target ≤ 1 s); %d errors, %d of them unclear; %d hung\n",
		outage, fltDurOr(first.Sub(killed), "never"), r.outageErrors, r.unclear, r.hung)
	if r.firstClear != "" {
		fmt.Printf("F3 the error: %s\n", r.firstClear)
	}
	okAt := load.firstOKAfterBack()
	fmt.Printf("F3 proxied calls answered again %s after kube-apiserver was ready\n", fltDurOr(okAt.Sub(back), "never (60 s)"))
	h.check(r.hung == 0, "F3: %d proxied requests hung", r.hung)
	h.check(r.unclear == 0, "F3: %d errors did not name the API server: %s", r.unclear, strings.Join(r.unclearSamples, " | "))
	h.check(!okAt.IsZero(), "F3: proxied calls did not work again within 60 s of the API server's return")

	// Item 1: the agent starts while the API server is down.
	if out, err := h.cluster("apiserver-stop"); err != nil {
		return fmt.Errorf("stop kube-apiserver: %w\n%s", err, out)
	}
	regs := h.dp.registrations()
	h.agent.stop()
	beats := h.dp.heartbeats()
	started := time.Now()
	if err := h.agent.start(); err != nil {
		return err
	}
	resumed := time.Duration(0)
	for time.Since(started) < 60*time.Second {
		if h.dp.heartbeats() > beats && h.dp.connected() {
			resumed = time.Since(started)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	reason := h.agent.readyReason()
	if out, err := h.cluster("apiserver-start"); err != nil {
		return fmt.Errorf("start kube-apiserver: %w\n%s", err, out)
	}
	back = time.Now()
	ready := time.Duration(0)
	for time.Since(back) < 60*time.Second {
		if h.agent.ready() {
			ready = time.Since(back)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	newRegs := h.dp.registrations() - regs
	fmt.Printf("F3 agent started with kube-apiserver down: heartbeating on the gateway after %s, %d new registrations, /ready said %q; ready %s after kube-apiserver returned\n",
		fltDurOr(resumed, "never (60 s)"), newRegs, reason, fltDurOr(ready, "never (60 s)"))
	h.check(resumed > 0 && newRegs == 0, "F3: with the API server down, the restarted agent did not resume on the gateway without registering")
	h.check(ready > 0, "F3: the agent did not become ready after the API server returned")
	h.check(h.agent.panics() == 0, "F3: %d panics", h.agent.panics())
	return nil
}

func (h *faultHarness) cluster(verb string) ([]byte, error) {
	return exec.Command("scripts/k8s/cluster.sh", verb, h.clusterDir).CombinedOutput()
}

// ---- F4 -------------------------------------------------------------------

func (h *faultHarness) f4(kills int) error {
	h.agent.stop() // one agent at a time on the two cores
	defer func() { _ = h.agent.start() }()
	corrupt, leftovers, within := 0, 0, 3*time.Second
	if h.short {
		within = 2 * time.Second
	}
	dir := filepath.Join(h.dir, "f4")
	a := h.newAgent("bench-f4", dir, "agent-bench-f4")
	// Every other start begins from the main agent's state (its token and
	// what it learnt of the cluster) as a new cluster: it registers within
	// its first second, so the kills land among the writes of registration
	// and credentials. The others start from whatever the last kill left.
	seed, err := fltSeed(filepath.Join(h.agent.dir, "state", "state.json"))
	if err != nil {
		return err
	}
	for i := 0; i < kills; i++ {
		if i%2 == 0 {
			os.RemoveAll(filepath.Join(dir, "state"))
			os.MkdirAll(filepath.Join(dir, "state"), 0o700)
			if err := os.WriteFile(filepath.Join(dir, "state", "state.json"), seed, 0o600); err != nil {
				return err
			}
		}
		if err := a.start(); err != nil {
			return err
		}
		time.Sleep(time.Duration(rand.Int64N(int64(within))))
		a.kill()
		if n, err := fltStateOK(filepath.Join(dir, "state")); err != nil {
			corrupt++
			fmt.Printf("F4 kill %d: %v\n", i+1, err)
		} else {
			leftovers += n
		}
	}
	// The last state is usable: the agent starts on it and heartbeats.
	if err := a.start(); err != nil {
		return err
	}
	up := false
	for t := time.Now(); time.Since(t) < 60*time.Second && !up; time.Sleep(100 * time.Millisecond) {
		for _, c := range h.dp.clusters() {
			up = up || (c.AgentID == a.id && c.Connected && c.Heartbeats > 0)
		}
	}
	a.stop()
	h.dp.forget(devplane.ClusterIDFor(a.id)) // one cluster again for the other figures
	fmt.Printf("F4 %d × kill -9 of the agent at random points in its first %s: %d state files failed to parse (target 0), %d temp files left beside them; restarted on the last state and heartbeating: %v\n",
		kills, within, corrupt, leftovers, up)
	h.check(corrupt == 0, "F4: %d state files failed to parse", corrupt)
	h.check(up, "F4: the agent did not come up on the last state")
	return nil
}

// fltSeed is the main agent's state without its identity and registration:
// what a second agent on the same cluster would know.
func fltSeed(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read the main agent's state: %w", err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("the main agent's state does not parse: %w", err)
	}
	for _, k := range []string{"agent_id", "cluster_id", "cluster_uuid", "gateway_ws_url", "credentials_fingerprint", "registered_at"} {
		delete(m, k)
	}
	return json.Marshal(m)
}

// fltStateOK parses state.json like the agent does (absent is fine) and
// counts leftover temp files.
func fltStateOK(dir string) (int, error) {
	tmps, _ := filepath.Glob(filepath.Join(dir, ".state.json.tmp-*"))
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if errors.Is(err, os.ErrNotExist) {
		return len(tmps), nil
	}
	if err != nil {
		return len(tmps), err
	}
	var st struct {
		Version int `json:"version"`
	}
	if err := json.Unmarshal(b, &st); err != nil || st.Version < 1 {
		return len(tmps), fmt.Errorf("state.json does not parse (%v): %q", err, b[:min(len(b), 80)])
	}
	return len(tmps), nil
}

// ---- F5 -------------------------------------------------------------------

func (h *faultHarness) f5(soak time.Duration) error {
	if err := h.dp.waitHeartbeating(60 * time.Second); err != nil {
		return err
	}
	load := h.startLoad(4, true, true)
	defer load.stop()
	time.Sleep(time.Second)
	start := h.idle(load)
	var rssMax float64
	var grMax int
	end := time.Now().Add(soak)
	nextDrop := time.Now().Add(min(soak/2, 5*time.Minute))
	for time.Now().Before(end) {
		time.Sleep(min(10*time.Second, time.Until(end)))
		if rss := h.agent.rssMiB(); rss > rssMax {
			rssMax = rss
		}
		if g := h.agent.goroutines(); g > grMax {
			grMax = g
		}
		if time.Now().After(nextDrop) { // a reconnect now and then is part of the mix
			h.dp.drop()
			nextDrop = time.Now().Add(5 * time.Minute)
		}
	}
	fin := h.idle(load)
	load.stop()
	r := load.result()
	drift := fltRatio(fin.rssMiB, start.rssMiB)
	fmt.Printf("F5 soak %s under mixed load (c=4 proxied calls, a watch, a tunnel stream, a reconnect every 5 min): RSS %.1f → %.1f MiB (%+.1f %%, target ≤ 10 %%; peak %.1f MiB), idle goroutines %d → %d (peak under load %d); %d requests ok, %d failed, %d hung\n",
		soak, start.rssMiB, fin.rssMiB, drift, rssMax, start.goroutines, fin.goroutines, grMax, r.ok, r.failed, r.hung)
	h.check(r.hung == 0, "F5: %d requests hung", r.hung)
	h.check(fltNoLeak(start.goroutines, fin.goroutines), "F5: goroutines grew %d → %d", start.goroutines, fin.goroutines)
	h.check(h.agent.exits() == 0 && h.agent.panics() == 0, "F5: agent restarts %d, panics %d", h.agent.exits(), h.agent.panics())
	return nil
}

// ---- the agent ------------------------------------------------------------

type fltAgent struct {
	agentProcess
	dir, id string
	port    int
}

// newAgent writes the config of an agent in dir; id "" derives it from the host.
func (h *faultHarness) newAgent(name, dir, id string) *fltAgent {
	a := &fltAgent{agentProcess: agentProcess{bin: filepath.Join(h.bin, "pipeops-agent"), out: &fltOutput{}}, dir: dir, id: id, port: ctlFreePort()}
	os.MkdirAll(dir, 0o700)
	a.cfg = filepath.Join(dir, "agent.yaml")
	a.env = append(os.Environ(), "PIPEOPS_TOKEN="+fltToken, "PIPEOPS_LOG_FORMAT=json", "NOTIFY_SOCKET=")
	if id != "" {
		id = "  id: " + id + "\n"
	}
	yaml := fmt.Sprintf(`version: 1
agent:
  name: %s
%s  port: %d
  state_dir: %s
  socket: %s
  heartbeat_interval: 1s
pipeops:
  api_url: %s
kubernetes:
  kubeconfig: %s
tunnel:
  forwards:
    - {name: echo, local_addr: "%s"}
`, name, id, a.port, filepath.Join(a.dir, "state"), filepath.Join(a.dir, "a.sock"), h.dp.public, h.kubeconfig, h.echo.Addr())
	_ = os.WriteFile(a.cfg, []byte(yaml), 0o600)
	return a
}

// stop is SIGTERM and a wait; kill is SIGKILL.
func (a *fltAgent) stop() { a.end(syscall.SIGTERM) }
func (a *fltAgent) kill() { a.end(syscall.SIGKILL) }

// panics counts panic reports in the agent's output.
func (a *fltAgent) panics() int {
	n := 0
	sc := bufio.NewScanner(strings.NewReader(a.out.String()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(l, "panic:") || strings.Contains(l, "panicked") {
			n++
		}
	}
	return n
}

// fltNoKeepAlive opens a new connection per call, so polling the agent
// leaves no idle connection (and goroutine) behind in it.
var fltNoKeepAlive = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

func (a *fltAgent) metrics() string {
	resp, err := fltNoKeepAlive.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", a.port))
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// metric reads one sample (name with labels, as exposed); -1 when absent.
func (a *fltAgent) metric(series string) float64 {
	for _, l := range strings.Split(a.metrics(), "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return -1
}

func (a *fltAgent) goroutines() int { return int(a.metric("go_goroutines")) }

func (a *fltAgent) rssMiB() float64 {
	rss, err := sseRSS(a.pid())
	if err != nil {
		return 0
	}
	return float64(rss) / (1 << 20)
}

func (a *fltAgent) ready() bool {
	resp, err := fltNoKeepAlive.Get(fmt.Sprintf("http://127.0.0.1:%d/ready", a.port))
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func (a *fltAgent) readyReason() string {
	resp, err := fltNoKeepAlive.Get(fmt.Sprintf("http://127.0.0.1:%d/ready", a.port))
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	s := strings.Join(strings.Fields(string(b)), " ")
	return s[:min(len(s), 160)]
}

// idleSnapshot is the agent at rest: load paused, nothing in flight.
type idleSnapshot struct {
	goroutines int
	rssMiB     float64
	heapMiB    float64 // Go heap in use
}

func (h *faultHarness) idle(l *fltLoad) idleSnapshot {
	l.pause(true)
	defer l.pause(false)
	for t := time.Now(); l.inFlight() > 0 && time.Since(t) < 30*time.Second; time.Sleep(10 * time.Millisecond) {
	}
	time.Sleep(2 * time.Second) // finished calls' goroutines end; the next heartbeats pass
	return idleSnapshot{goroutines: h.agent.goroutines(), rssMiB: h.agent.rssMiB(), heapMiB: h.agent.metric("go_memstats_heap_inuse_bytes") / (1 << 20)}
}

// ---- the load -------------------------------------------------------------

// fltDeadline bounds every proxied call: past it, a call counts as hung.
const fltDeadline = 15 * time.Second

type fltLoad struct {
	h      *faultHarness
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	paused atomic.Bool
	flying atomic.Int64

	mu                   sync.Mutex
	ok, failed, hung     int
	samples              []string
	watches              int
	tunnelBytes          int64
	tunnelErrs           int
	outage, back         time.Time
	firstFailAfterOutage time.Time
	firstClear           string
	outageErrors         int
	unclear              int
	unclearSamples       []string
	firstOK              time.Time
	stopped              bool
}

type fltResult struct {
	ok, failed, hung, watches, tunnelErrs int
	tunnelBytes                           int64
	samples                               []string
	firstFailAfterOutage                  time.Time
	firstClear                            string
	outageErrors, unclear                 int
	unclearSamples                        []string
}

// startLoad runs conc proxied-call workers (GET the namespace's
// ConfigMaps through the devplane's front door), optionally a watch and a
// tunnel stream that echoes 32 KiB writes.
func (h *faultHarness) startLoad(conc int, watch, tunnel bool) *fltLoad {
	ctx, cancel := context.WithCancel(context.Background())
	l := &fltLoad{h: h, ctx: ctx, cancel: cancel}
	for i := 0; i < conc; i++ {
		l.wg.Add(1)
		go l.caller()
	}
	if watch {
		l.wg.Add(1)
		go l.watcher()
	}
	if tunnel {
		l.wg.Add(1)
		go l.tunnel()
	}
	return l
}

func (l *fltLoad) stop() {
	l.mu.Lock()
	if l.stopped {
		l.mu.Unlock()
		return
	}
	l.stopped = true
	l.mu.Unlock()
	l.cancel()
	l.wg.Wait()
}

func (l *fltLoad) pause(p bool)    { l.paused.Store(p) }
func (l *fltLoad) inFlight() int64 { return l.flying.Load() }

func (l *fltLoad) markOutage(t time.Time) { l.mu.Lock(); l.outage = t; l.mu.Unlock() }
func (l *fltLoad) markBack(t time.Time)   { l.mu.Lock(); l.back = t; l.mu.Unlock() }
func (l *fltLoad) firstOKAfterBack() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.firstOK
}

// front is the front door's URL for path, "" while the devplane knows no
// cluster (it was just restarted).
func (l *fltLoad) front(path string) string {
	id := l.h.clusterID()
	if id == "" {
		return ""
	}
	return fmt.Sprintf("http://127.0.0.1:%d%s%s/k8s%s", l.h.dp.port, devplane.FrontDoorPrefix, id, path)
}

var fltClient = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}

func (l *fltLoad) caller() {
	defer l.wg.Done()
	for l.ctx.Err() == nil {
		url := l.front("/api/v1/namespaces/default/configmaps")
		if l.paused.Load() || url == "" {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		l.flying.Add(1)
		start := time.Now()
		ctx, cancel := context.WithTimeout(l.ctx, fltDeadline)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := fltClient.Do(req)
		var body []byte
		code := 0
		if err == nil {
			code = resp.StatusCode
			body, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		hung := ctx.Err() == context.DeadlineExceeded
		cancel()
		l.flying.Add(-1)
		if l.ctx.Err() != nil {
			return // stopped mid-call: not a result
		}
		l.record(start, code, body, err, hung)
		if err != nil || code != 200 {
			time.Sleep(20 * time.Millisecond) // the devplane is down: do not spin
		}
	}
}

func (l *fltLoad) record(start time.Time, code int, body []byte, err error, hung bool) {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case hung:
		l.hung++
	case err == nil && code == 200:
		l.ok++
		if !l.back.IsZero() && start.After(l.back) && l.firstOK.IsZero() {
			l.firstOK = now
		}
		return
	default:
		l.failed++
	}
	msg := strings.TrimSpace(string(body))
	if err != nil {
		msg = err.Error()
	}
	msg = fmt.Sprintf("%d %s", code, msg[:min(len(msg), 200)])
	if len(l.samples) < 3 && !slices.Contains(l.samples, msg) {
		l.samples = append(l.samples, msg)
	}
	if !l.outage.IsZero() && l.back.IsZero() && now.After(l.outage) {
		l.outageErrors++
		if l.firstFailAfterOutage.IsZero() {
			l.firstFailAfterOutage, l.firstClear = now, msg
		}
		// Clear: the agent's answer names the API server (a 502 from the
		// front door carrying the agent's error), and nothing hung.
		if hung || code != http.StatusBadGateway || !strings.Contains(msg, "API server") {
			l.unclear++
			if len(l.unclearSamples) < 3 {
				l.unclearSamples = append(l.unclearSamples, msg)
			}
		}
	}
}

func (l *fltLoad) watcher() {
	defer l.wg.Done()
	for l.ctx.Err() == nil {
		url := l.front("/api/v1/namespaces/default/configmaps?watch=true")
		if url == "" {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		req, _ := http.NewRequestWithContext(l.ctx, http.MethodGet, url, nil)
		if resp, err := fltClient.Do(req); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		l.mu.Lock()
		l.watches++
		l.mu.Unlock()
		time.Sleep(100 * time.Millisecond)
	}
}

func (l *fltLoad) tunnel() {
	defer l.wg.Done()
	buf, back := bytes.Repeat([]byte("x"), 32<<10), make([]byte, 32<<10)
	for l.ctx.Err() == nil {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", l.h.fwdPort), 2*time.Second)
		if err != nil {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		stop := context.AfterFunc(l.ctx, func() { c.Close() })
		for l.ctx.Err() == nil {
			_ = c.SetDeadline(time.Now().Add(30 * time.Second))
			if _, err = c.Write(buf); err == nil {
				_, err = io.ReadFull(c, back)
			}
			if err != nil {
				break
			}
			l.mu.Lock()
			l.tunnelBytes += int64(len(buf))
			l.mu.Unlock()
		}
		stop()
		c.Close()
		if l.ctx.Err() == nil {
			l.mu.Lock()
			l.tunnelErrs++
			l.mu.Unlock()
			time.Sleep(100 * time.Millisecond)
		}
	}
}

func (l *fltLoad) result() fltResult {
	l.mu.Lock()
	defer l.mu.Unlock()
	return fltResult{ok: l.ok, failed: l.failed, hung: l.hung, watches: l.watches, tunnelErrs: l.tunnelErrs,
		tunnelBytes: l.tunnelBytes, samples: l.samples, firstFailAfterOutage: l.firstFailAfterOutage,
		firstClear: l.firstClear, outageErrors: l.outageErrors, unclear: l.unclear, unclearSamples: l.unclearSamples}
}

// ---- the relay, the echo server, small helpers ----------------------------

func fltEcho(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			_, _ = io.Copy(c, c)
		}()
	}
}

// fltOutput is a goroutine-safe, bounded (last 8 MiB) output buffer.
type fltOutput struct {
	mu  sync.Mutex
	buf []byte
}

func (o *fltOutput) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.buf = append(o.buf, p...)
	if len(o.buf) > 8<<20 {
		o.buf = append([]byte(nil), o.buf[len(o.buf)-(4<<20):]...)
	}
	return len(p), nil
}

func (o *fltOutput) String() string { o.mu.Lock(); defer o.mu.Unlock(); return string(o.buf) }

func fltMedian(d []time.Duration) time.Duration {
	s := slices.Sorted(slices.Values(d))
	return s[len(s)/2]
}

func fltDur(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }

func fltDurOr(d time.Duration, never string) string {
	if d <= 0 {
		return never
	}
	return fltDur(d)
}

func fltRatio[T int | float64](a, b T) float64 {
	if b == 0 {
		return 0
	}
	return (float64(a)/float64(b) - 1) * 100
}

// fltNoLeak: back to the baseline within 5 %, and at most one goroutine
// more (a connection the last heartbeat or poll left for a moment).
func fltNoLeak(base, end int) bool { return base > 0 && float64(end) <= float64(base)*1.05+1 }
