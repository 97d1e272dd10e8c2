package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func init() { benches["sse"] = benchSSE }

// benchSSE measures what N dashboard viewers cost the agent: one real
// pipeops-agent process, measured for the same duration with 0 viewers and
// then with N SSE viewers reading /api/realtime/events. It prints the added
// CPU (share of one core) and RSS against the targets (< 5 %, < 10 MiB).
func benchSSE(args []string) error {
	fs := flag.NewFlagSet("sse", flag.ContinueOnError)
	viewers := fs.Int("viewers", 100, "concurrent SSE viewers")
	dur := fs.Duration("duration", 20*time.Second, "measurement window of each phase")
	settle := fs.Duration("settle", 3*time.Second, "wait before each measurement")
	if err := fs.Parse(args); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "bench-sse-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "pipeops-agent")
	if out, err := exec.Command("go", "build", "-o", bin, "./cmd/pipeops-agent").CombinedOutput(); err != nil {
		return fmt.Errorf("build the agent (run from the repository root): %w\n%s", err, out)
	}
	port, err := sseFreePort()
	if err != nil {
		return err
	}
	cpPort, err := sseFreePort()
	if err != nil {
		return err
	}
	cfg := filepath.Join(dir, "agent.yaml")
	// The control plane is unreachable: the agent retries in the background
	// in both phases alike, so it cancels out of the difference.
	yaml := fmt.Sprintf("version: 1\nagent:\n  name: bench\n  port: %d\n  state_dir: %s\n  socket: %s\npipeops:\n  api_url: http://127.0.0.1:%d\nkubernetes:\n  kubeconfig: %s\n",
		port, filepath.Join(dir, "state"), filepath.Join(dir, "a.sock"), cpPort, filepath.Join(dir, "none"))
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		return err
	}
	cmd := exec.Command(bin, "run", "--config", cfg)
	cmd.Env = append(os.Environ(), "PIPEOPS_TOKEN=bench", "PIPEOPS_LOG_FORMAT=json", "NOTIFY_SOCKET=")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	pid := cmd.Process.Pid
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	if err := sseWaitUp(base + "/health"); err != nil {
		return fmt.Errorf("%w\n%s", err, out.String())
	}

	time.Sleep(*settle)
	idle, err := sseMeasure(pid, *dur)
	if err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var events, bytesRead, failed atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < *viewers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := sseViewer(ctx, base+"/api/realtime/events", &events, &bytesRead); err != nil && ctx.Err() == nil {
				failed.Add(1)
				fmt.Fprintln(os.Stderr, "viewer:", err)
			}
		}()
	}
	time.Sleep(*settle)
	e0, b0 := events.Load(), bytesRead.Load()
	loaded, err := sseMeasure(pid, *dur)
	if err != nil {
		return err
	}
	e1, b1 := events.Load(), bytesRead.Load()
	cancel()
	wg.Wait()

	addCPU := (loaded.cpu - idle.cpu) * 100
	addRSS := float64(loaded.rssMax-idle.rssMax) / (1 << 20)
	fmt.Printf("sse bench: one agent, %d SSE viewers vs 0, %v per phase (same process, same run)\n", *viewers, *dur)
	fmt.Printf("  agent CPU   0 viewers: %6.2f %% of one core   %d viewers: %6.2f %%   added: %6.2f %%  (target < 5 %%)  %s\n",
		idle.cpu*100, *viewers, loaded.cpu*100, addCPU, verdict(addCPU < 5))
	fmt.Printf("  agent RSS   0 viewers: %6.1f MiB              %d viewers: %6.1f MiB   added: %6.1f MiB (target < 10 MiB) %s\n",
		float64(idle.rssMax)/(1<<20), *viewers, float64(loaded.rssMax)/(1<<20), addRSS, verdict(addRSS < 10))
	secs := dur.Seconds()
	fmt.Printf("  delivered: %.1f events/s per viewer, %.0f KiB/s in total; viewers failed: %d\n",
		float64(e1-e0)/secs/float64(*viewers), float64(b1-b0)/secs/1024, failed.Load())
	if failed.Load() > 0 {
		for _, l := range strings.Split(out.String(), "\n") {
			if strings.Contains(l, "dashboard") {
				fmt.Fprintln(os.Stderr, "agent:", l)
			}
		}
	}
	return nil
}

func verdict(ok bool) string {
	if ok {
		return "OK"
	}
	return "OVER TARGET"
}

// sseSample is one phase: mean CPU share of one core and the peak RSS.
type sseSample struct {
	cpu    float64
	rssMax int64
}

func sseMeasure(pid int, d time.Duration) (sseSample, error) {
	c0, err := sseCPU(pid)
	if err != nil {
		return sseSample{}, err
	}
	start := time.Now()
	var s sseSample
	for time.Since(start) < d {
		time.Sleep(250 * time.Millisecond)
		if r, err := sseRSS(pid); err == nil && r > s.rssMax {
			s.rssMax = r
		}
	}
	c1, err := sseCPU(pid)
	if err != nil {
		return sseSample{}, err
	}
	s.cpu = (c1 - c0) / time.Since(start).Seconds()
	return s, nil
}

// sseCPU is the process's user+system CPU seconds from /proc/<pid>/stat.
func sseCPU(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100, nil // USER_HZ is 100 on Linux
}

// sseRSS is VmRSS in bytes.
func sseRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			kb, err := strconv.ParseInt(strings.Fields(l)[1], 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no VmRSS for pid %d", pid)
}

// sseViewer reads the stream as a browser would, counting events.
func sseViewer(ctx context.Context, url string, events, n *atomic.Int64) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	br := bufio.NewReaderSize(resp.Body, 64<<10)
	for {
		line, err := br.ReadSlice('\n')
		n.Add(int64(len(line)))
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			return err
		}
		if bytes.HasPrefix(line, []byte("event:")) {
			events.Add(1)
		}
	}
}

func sseFreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func sseWaitUp(url string) error {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if r, err := http.Get(url); err == nil {
			r.Body.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("agent did not answer at %s", url)
}
