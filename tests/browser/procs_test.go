package browser

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

// syncBuffer is a bytes.Buffer safe for a process's output and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// proc is a real binary started by a test.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan error
}

func startProc(t *testing.T, name string, cmd *exec.Cmd) *proc {
	t.Helper()
	p := &proc{name: name, cmd: cmd, out: &syncBuffer{}, done: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("%s output:\n%s", name, p.out.String())
		}
	})
	return p
}

// kill stops the process at once (SIGKILL: the control plane vanishes) and reaps it.
func (p *proc) kill() {
	select {
	case <-p.done:
		p.done <- nil // keep it readable for the next caller
		return
	default:
	}
	p.cmd.Process.Kill()
	err := <-p.done
	p.done <- err
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// waitHTTP polls url until it answers (any status) or the process exits.
func waitHTTP(t *testing.T, p *proc, url string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if r, err := http.Get(url); err == nil {
			r.Body.Close()
			return
		}
		select {
		case err := <-p.done:
			p.done <- err
			t.Fatalf("%s exited early: %v\n%s", p.name, err, p.out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not answer at %s\n%s", p.name, url, p.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startDevplane runs the reference control plane binary on a free port.
func startDevplane(t *testing.T, token string) (*proc, string) {
	t.Helper()
	bin := testbin.Build(t, "pipeops-devplane")
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	p := startProc(t, "pipeops-devplane", exec.Command(bin, "--listen", addr, "--token", token))
	waitHTTP(t, p, "http://"+addr+"/admin/clusters")
	return p, "http://" + addr
}

// startAgent runs pipeops-agent against apiURL and the given kubeconfig,
// with extra environment (the transport switches), and waits for its HTTP port.
func startAgent(t *testing.T, apiURL, token, kubeconfig string, env ...string) (*proc, string) {
	t.Helper()
	bin := testbin.Build(t, "pipeops-agent")
	dir := testbin.ShortTempDir(t)
	port := freePort(t)
	cfg := filepath.Join(dir, "agent.yaml")
	yaml := fmt.Sprintf("version: 1\nagent:\n  name: browser-e2e\n  port: %d\n  state_dir: %s\n  socket: %s\n"+
		"pipeops:\n  api_url: %s\nkubernetes:\n  kubeconfig: %s\n",
		port, filepath.Join(dir, "state"), filepath.Join(dir, "agent.sock"), apiURL, kubeconfig)
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "run", "--config", cfg)
	cmd.Env = append(os.Environ(), append([]string{"PIPEOPS_TOKEN=" + token, "PIPEOPS_LOG_FORMAT=json", "NOTIFY_SOCKET="}, env...)...)
	p := startProc(t, "pipeops-agent", cmd)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	waitHTTP(t, p, base+"/health")
	return p, base
}
