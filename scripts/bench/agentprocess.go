package main

import (
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// agentProcess is one real pipeops-agent process that a bench starts, signals
// and watches: `pipeops-agent run --config cfg` with env, its output in out.
type agentProcess struct {
	bin, cfg   string
	env        []string
	out        *fltOutput
	mu         sync.Mutex
	cmd        *exec.Cmd // nil while stopped
	done       chan struct{}
	unexpected atomic.Int32 // exits the bench did not cause
}

func (a *agentProcess) start() error {
	cmd := exec.Command(a.bin, "run", "--config", a.cfg)
	cmd.Env = a.env
	cmd.Stdout, cmd.Stderr = a.out, a.out
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	a.mu.Lock()
	a.cmd, a.done = cmd, done
	a.mu.Unlock()
	go func() {
		_ = cmd.Wait()
		a.mu.Lock()
		expected := a.cmd != cmd
		a.mu.Unlock()
		if !expected {
			a.unexpected.Add(1)
		}
		close(done)
	}()
	return nil
}

// end sends sig and waits for the exit (SIGKILL after 40 s).
func (a *agentProcess) end(sig syscall.Signal) {
	a.mu.Lock()
	cmd, done := a.cmd, a.done
	a.cmd = nil
	a.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(40 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// pid is the running process's id, 0 while stopped.
func (a *agentProcess) pid() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd == nil {
		return 0
	}
	return a.cmd.Process.Pid
}

// exits counts agent exits the bench did not ask for (crashes).
func (a *agentProcess) exits() int { return int(a.unexpected.Load()) }
