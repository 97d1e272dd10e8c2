package main

import (
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"syscall"

	"github.com/pipeops/pipeops-vm-agent/daemon"
)

func init() { benches["proxy-agent-profiled"] = runProfiledAgent }

// runProfiledAgent is the real agent (daemon.Main, the code of
// cmd/pipeops-agent) inside the bench binary, for proxy -target apiserver
// -profile DIR: SIGUSR1 starts a CPU profile and writes
// DIR/allocs-start.pprof, SIGUSR2 stops it into DIR/cpu.pprof and writes
// DIR/allocs.pprof, so the two allocation profiles bracket the measured
// runs (go tool pprof -base). Usage: proxy-agent-profiled DIR run --config …
func runProfiledAgent(args []string) error {
	if len(args) < 1 {
		return fmt.Errorf("usage: proxy-agent-profiled DIR <pipeops-agent arguments>")
	}
	dir := args[0]
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGUSR1, syscall.SIGUSR2)
	go func() {
		var cpu *os.File
		for s := range sig {
			switch s {
			case syscall.SIGUSR1:
				writeHeapProfile(filepath.Join(dir, "allocs-start.pprof"))
				f, err := os.Create(filepath.Join(dir, "cpu.pprof"))
				if err == nil && pprof.StartCPUProfile(f) == nil {
					cpu = f
				}
			case syscall.SIGUSR2:
				if cpu != nil {
					pprof.StopCPUProfile()
					cpu.Close()
					cpu = nil
				}
				writeHeapProfile(filepath.Join(dir, "allocs.pprof"))
			}
		}
	}()
	if code := daemon.Main(append([]string{"pipeops-agent"}, args[1:]...), os.Stdout, os.Stderr); code != 0 {
		return fmt.Errorf("agent exited with %d", code)
	}
	return nil
}

func writeHeapProfile(path string) {
	runtime.GC() // the allocation counts are as of the last GC
	f, err := os.Create(path)
	if err != nil {
		return
	}
	defer f.Close()
	_ = pprof.Lookup("allocs").WriteTo(f, 0)
}
