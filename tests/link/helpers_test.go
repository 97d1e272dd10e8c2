package link

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/devplane"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

const token = "e2e-link-token"

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

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for: %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// devplaneProc is the pipeops-devplane binary on a fixed port, so it can be
// killed and started again at the same address.
type devplaneProc struct {
	t      *testing.T
	host   string // listen address; 127.0.0.1 unless "--listen-host" is given
	bin    string
	port   int
	scheme string
	extra  []string
	cmd    *exec.Cmd
	exited chan struct{}
	out    *syncBuffer
}

func startDevplane(t *testing.T, extra ...string) *devplaneProc {
	t.Helper()
	p := &devplaneProc{t: t, bin: testbin.Build(t, "pipeops-devplane"), port: freePort(t), scheme: "http", host: "127.0.0.1", out: &syncBuffer{}}
	for i := 0; i < len(extra); i++ {
		switch extra[i] {
		case "--listen-host": // a helper option, not a devplane flag
			p.host = extra[i+1]
			i++
			continue
		case "--tls-cert":
			p.scheme = "https"
		}
		p.extra = append(p.extra, extra[i])
	}
	p.start()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("devplane output:\n%s", p.out.String())
		}
	})
	return p
}

func (p *devplaneProc) url() string { return fmt.Sprintf("%s://%s:%d", p.scheme, p.host, p.port) }

// start runs the binary and waits until it accepts connections.
func (p *devplaneProc) start() {
	p.t.Helper()
	args := append([]string{"--listen", fmt.Sprintf("%s:%d", p.host, p.port), "--token", token, "--log-level", "debug"}, p.extra...)
	var err error
	for i := 0; i < 50; i++ { // the port may still be in TIME_WAIT-free limbo for a moment
		p.cmd = exec.Command(p.bin, args...)
		p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
		if err = p.cmd.Start(); err != nil {
			p.t.Fatal(err)
		}
		p.exited = make(chan struct{})
		go func(c *exec.Cmd, ch chan struct{}) { _ = c.Wait(); close(ch) }(p.cmd, p.exited)
		if p.waitListening() {
			return
		}
		p.kill()
		time.Sleep(50 * time.Millisecond)
	}
	p.t.Fatalf("devplane did not start listening on port %d", p.port)
}

func (p *devplaneProc) waitListening() bool {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-p.exited:
			return false
		default:
		}
		c, err := net.DialTimeout("tcp", fmt.Sprintf("%s:%d", p.host, p.port), 200*time.Millisecond)
		if err == nil {
			c.Close()
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

// kill ends the process at once, like a crash.
func (p *devplaneProc) kill() {
	if p.cmd != nil && p.cmd.Process != nil {
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.exited
		p.cmd = nil
	}
}

func (p *devplaneProc) admin(method, path, body string) *http.Response {
	p.t.Helper()
	req, _ := http.NewRequest(method, p.adminURL()+path, strings.NewReader(body))
	resp, err := insecureClient.Do(req)
	if err != nil {
		p.t.Fatalf("%s %s: %v", method, path, err)
	}
	return resp
}

var insecureClient = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
	TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // the test's own self-signed devplane
	Proxy:           nil,
}}

// adminURL is where the admin API answers (the agent-facing listener).
func (p *devplaneProc) adminURL() string { return fmt.Sprintf("%s://%s:%d", p.scheme, p.host, p.port) }

// clusters lists what the devplane's admin API shows (nil when it is down).
func (p *devplaneProc) clusters() []devplane.ClusterInfo {
	resp, err := insecureClient.Get(p.adminURL() + "/admin/clusters")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var cs []devplane.ClusterInfo
	_ = json.NewDecoder(resp.Body).Decode(&cs)
	return cs
}

func (p *devplaneProc) only() devplane.ClusterInfo {
	cs := p.clusters()
	if len(cs) != 1 {
		return devplane.ClusterInfo{}
	}
	return cs[0]
}

// agentProc is the pipeops-agent binary.
type agentProc struct {
	t      *testing.T
	bin    string
	dir    string
	cfg    string
	port   int
	socket string
	cmd    *exec.Cmd
	out    *syncBuffer
	done   chan struct{}
	env    []string // extra environment
}

// newAgent writes a config pointing at apiURL and the test cluster; the
// state directory survives restarts of the process.
func newAgent(t *testing.T, apiURL, kubeconfig, pipeopsExtra string) *agentProc {
	t.Helper()
	a := &agentProc{t: t, bin: testbin.Build(t, "pipeops-agent"), dir: testbin.ShortTempDir(t), port: freePort(t), out: &syncBuffer{}}
	a.socket = filepath.Join(a.dir, "agent.sock")
	a.cfg = filepath.Join(a.dir, "agent.yaml")
	yaml := fmt.Sprintf(`version: 1
agent:
  name: e2e-link
  port: %d
  state_dir: %s
  socket: %s
  heartbeat_interval: 1s
pipeops:
  api_url: %s
  reconnect:
    interval: 200ms
    max_interval: 1s
%skubernetes:
  kubeconfig: %s
`, a.port, filepath.Join(a.dir, "state"), a.socket, apiURL, pipeopsExtra, kubeconfig)
	if err := os.WriteFile(a.cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		a.stop()
		if t.Failed() || os.Getenv("LINK_TEST_VERBOSE") != "" {
			t.Logf("agent output:\n%s", a.out.String())
		}
	})
	return a
}

func (a *agentProc) start() {
	a.t.Helper()
	a.cmd = exec.Command(a.bin, "run", "--config", a.cfg)
	a.cmd.Env = append(append(os.Environ(), "PIPEOPS_TOKEN="+token, "PIPEOPS_LOG_FORMAT=json", "NOTIFY_SOCKET="), a.env...)
	a.cmd.Stdout, a.cmd.Stderr = a.out, a.out
	if err := a.cmd.Start(); err != nil {
		a.t.Fatal(err)
	}
	a.done = make(chan struct{})
	go func(c *exec.Cmd, done chan struct{}) { _ = c.Wait(); close(done) }(a.cmd, a.done)
}

// stop sends SIGTERM and waits (the agent closes its link with 1000).
func (a *agentProc) stop() {
	if a.cmd == nil {
		return
	}
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
	case <-time.After(30 * time.Second):
		_ = a.cmd.Process.Kill()
		<-a.done
	}
	a.cmd = nil
}

// status reads GET /v1/status through pipeopsctl status --json.
func (a *agentProc) status() (apitype.StatusResponse, error) {
	var st apitype.StatusResponse
	out, err := exec.Command(testbin.Build(a.t, "pipeopsctl"), "--socket", a.socket, "status", "--json").Output()
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal(out, &st)
}

// goroutines reads go_goroutines from the agent's /metrics.
func (a *agentProc) goroutines() int {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", a.port))
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "go_goroutines "); ok {
			n, _ := strconv.ParseFloat(v, 64)
			return int(n)
		}
	}
	return -1
}
