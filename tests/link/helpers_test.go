package link

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/devplane"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

const token = "e2e-link-token"

// devplaneProc is the pipeops-devplane binary on a fixed port, so it can be
// killed and started again at the same address.
type devplaneProc struct {
	t      *testing.T
	host   string // listen address; 127.0.0.1 unless "--listen-host" is given
	bin    string
	port   int
	scheme string
	extra  []string
	proc   *testbin.Proc // nil while it is down
	out    *testbin.Output
}

func startDevplane(t *testing.T, extra ...string) *devplaneProc {
	t.Helper()
	p := &devplaneProc{t: t, bin: testbin.Build(t, "pipeops-devplane"), port: testbin.FreePort(t), scheme: "http", host: "127.0.0.1", out: &testbin.Output{}}
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
	var started time.Time
	testbin.Eventually(p.t, 60*time.Second, fmt.Sprintf("devplane listening on port %d", p.port), func() bool {
		if p.proc == nil {
			p.proc, started = testbin.StartTo(p.t, p.out, p.bin, nil, args...), time.Now()
		}
		select {
		case <-p.proc.Done(): // the port may still be in TIME_WAIT-free limbo for a moment: start again
			p.kill()
			return false
		default:
		}
		c, err := net.DialTimeout("tcp", fmt.Sprintf("%s:%d", p.host, p.port), 200*time.Millisecond)
		if err == nil {
			c.Close()
			return true
		}
		if time.Since(started) > 5*time.Second { // alive but not listening: start again
			p.kill()
		}
		return false
	})
}

// kill ends the process at once, like a crash.
func (p *devplaneProc) kill() {
	if p.proc != nil {
		p.proc.Kill()
		p.proc = nil
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
	proc   *testbin.Proc // nil while it is stopped
	out    *testbin.Output
	env    []string // extra environment
}

// newAgent writes a config pointing at apiURL and the test cluster; the
// state directory survives restarts of the process.
func newAgent(t *testing.T, apiURL, kubeconfig, pipeopsExtra string) *agentProc {
	t.Helper()
	a := &agentProc{t: t, bin: testbin.Build(t, "pipeops-agent"), dir: testbin.ShortTempDir(t), out: &testbin.Output{}}
	f := testbin.WriteAgentConfig(t, a.dir, testbin.AgentConfig{Name: "e2e-link", APIURL: apiURL, Kubeconfig: kubeconfig, PipeOps: pipeopsExtra})
	a.port, a.socket, a.cfg = f.Port, f.Socket, f.Config
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
	a.proc = testbin.StartTo(a.t, a.out, a.bin, testbin.AgentEnv(token, a.env...), "run", "--config", a.cfg)
}

// stop sends SIGTERM and waits (the agent closes its link with 1000).
func (a *agentProc) stop() {
	if a.proc == nil {
		return
	}
	a.proc.Stop()
	a.proc = nil
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
