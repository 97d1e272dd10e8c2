package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/config"
	"github.com/pipeops/pipeops-vm-agent/internal/controlplane"
	"github.com/pipeops/pipeops-vm-agent/internal/health"
	"github.com/pipeops/pipeops-vm-agent/internal/state"
	"github.com/pipeops/pipeops-vm-agent/internal/tunnel"
)

func init() { benches["tunnel-agent"] = runTunnelAgent }

const benchToken = "bench-token"

// runTunnelAgent is the agent side of the tunnel bench, in its own process
// so its CPU time and RSS are measured alone: the real control-plane client
// and the real tunnel Manager, with forwards to the bench's targets. It runs
// until SIGTERM or until its parent closes stdin.
func runTunnelAgent(args []string) error {
	fs := flag.NewFlagSet("tunnel-agent", flag.ContinueOnError)
	api := fs.String("api", "", "control-plane URL")
	ca := fs.String("ca", "", "CA file for https")
	window := fs.Int("window", tunnel.DefaultStreamWindow, "stream window bytes")
	budget := fs.Int64("budget", tunnel.DefaultMemoryBudget, "memory budget bytes")
	var fwds multiFlag
	fs.Var(&fwds, "forward", "name=host:port (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg := config.Default()
	cfg.PipeOps.APIURL = *api
	cfg.PipeOps.Token = benchToken
	cfg.PipeOps.TLS.CAFile = *ca
	cfg.PipeOps.Reconnect.Interval = config.D(50 * time.Millisecond)
	forwards := map[string]string{}
	for _, f := range fwds {
		name, addr, _ := strings.Cut(f, "=")
		forwards[name] = addr
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	mgr := tunnel.New(tunnel.Config{StreamWindow: *window, MemoryBudget: *budget, MaxStreams: 2048, Forwards: forwards}, nil, nil, log)
	st, _ := state.Open("", nil)
	cp, err := controlplane.New(controlplane.Options{Config: cfg, AgentID: "bench-agent", State: st, Health: health.New(nil),
		Cluster: benchCluster{}, Log: log, K3sTokenPath: "/nonexistent"})
	if err != nil {
		return err
	}
	cp.Register(mgr)
	if path := os.Getenv("TUNNEL_BENCH_CPUPROFILE"); path != "" { // profile the agent side
		f, err := os.Create(path)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	go func() { // parent gone → exit
		_, _ = os.Stdin.Read(make([]byte, 1))
		stop()
	}()
	go func() { _ = mgr.Run(ctx) }()
	err = cp.Run(ctx)
	return err
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

type benchCluster struct{}

func (benchCluster) Version(context.Context) (string, error) { return "v1.36.3", nil }
func (benchCluster) Credentials(context.Context) (string, string, error) {
	return "token", "Q0EK", nil
}
func (benchCluster) Telemetry(context.Context) (controlplane.Telemetry, error) {
	return controlplane.Telemetry{K8sVersion: "v1.36.3"}, nil
}

// agentProc is a running tunnel-agent subprocess.
type agentProc struct {
	cmd   *exec.Cmd
	stdin interface{ Close() error }
}

func startAgent(api, ca string, window int, forwards map[string]string) (*agentProc, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	args := []string{"tunnel-agent", "-api", api, "-ca", ca, "-window", strconv.Itoa(window)}
	for n, a := range forwards {
		args = append(args, "-forward", n+"="+a)
	}
	cmd := exec.Command(self, args...)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return &agentProc{cmd: cmd, stdin: in}, nil
}

func (a *agentProc) stop() {
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	_ = a.stdin.Close()
	done := make(chan struct{})
	go func() { _ = a.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(40 * time.Second):
		_ = a.cmd.Process.Kill()
		<-done
	}
}

// cpuSeconds is the process's user+system CPU time from /proc.
func (a *agentProc) cpuSeconds() float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", a.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 {
		s = s[i+2:]
	}
	f := strings.Fields(s)
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ
}

// rssMiB is the process's resident set from /proc.
func (a *agentProc) rssMiB() float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", a.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}
