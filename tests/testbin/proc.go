package testbin

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// StopTimeout is how long Stop waits after SIGTERM before it sends SIGKILL.
const StopTimeout = 30 * time.Second

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Eventually polls cond until it holds or within has passed, then fails the
// test naming what it waited for, followed by the text of each detail. It
// polls every 10 ms at first and backs off to every 100 ms, so a long wait
// on a subprocess does not hammer it.
func Eventually(t testing.TB, within time.Duration, what string, cond func() bool, detail ...func() string) {
	t.Helper()
	deadline := time.Now().Add(within)
	pause := 10 * time.Millisecond
	for !cond() {
		if time.Now().After(deadline) {
			msg := fmt.Sprintf("timed out after %s waiting for: %s", within, what)
			for _, d := range detail {
				msg += "\n" + d()
			}
			t.Fatal(msg)
		}
		time.Sleep(pause)
		pause = min(2*pause, 100*time.Millisecond)
	}
}

// Output is a buffer that a process writes while the test reads it. The zero
// value is ready to use.
type Output struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (o *Output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.Write(p)
}

func (o *Output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.String()
}

// Proc is a binary started by Start or StartTo.
type Proc struct {
	Name string  // the binary's base name, for messages
	Out  *Output // its stdout and stderr

	cmd  *exec.Cmd
	done chan struct{}
	err  error // what Wait returned; set before done closes
}

// Start runs bin with args, and env added to the test's environment, until
// the test ends: then it stops it (SIGTERM, SIGKILL after StopTimeout) and,
// if the test failed, logs its output.
func Start(t testing.TB, bin string, env []string, args ...string) *Proc {
	t.Helper()
	out := &Output{}
	name := filepath.Base(bin)
	t.Cleanup(func() { // runs after the stop StartTo registers
		if t.Failed() {
			t.Logf("%s output:\n%s", name, out.String())
		}
	})
	return StartTo(t, out, bin, env, args...)
}

// StartTo is Start writing into out, which the caller owns and logs: it can
// collect the output of several runs of a restarted binary.
func StartTo(t testing.TB, out *Output, bin string, env []string, args ...string) *Proc {
	t.Helper()
	p := &Proc{Name: filepath.Base(bin), Out: out, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = out, out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", p.Name, err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(p.Stop)
	return p
}

// Pid is the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// String is the output so far.
func (p *Proc) String() string { return p.Out.String() }

// Done is closed once the process has exited and been reaped.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err is the exit status (nil for exit 0) once Done is closed.
func (p *Proc) Err() error {
	<-p.done
	return p.err
}

// Signal sends sig to the process, unless it has exited.
func (p *Proc) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// Stop sends SIGTERM and waits for the exit, sending SIGKILL after
// StopTimeout. It returns at once if the process has exited.
func (p *Proc) Stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(StopTimeout):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// Kill ends the process at once, like a crash, and reaps it.
func (p *Proc) Kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}
