package ha

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/devplane"
	"github.com/pipeops/pipeops-vm-agent/internal/kube"
	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

const token = "e2e-ha-token"

// Short lease settings, so a kill -9 is noticed in seconds: 3 s lease,
// 2 s renew deadline, 500 ms retries.
const haConfig = `ha:
  enabled: true
  identity: %s
  lease_duration: 3s
  renew_deadline: 2s
  retry_period: 500ms
`

// cluster is one test's setup: a real API server, the reference control
// plane as a process, and three agents as processes, each with its own
// state directory, ports and relay to the control plane.
type cluster struct {
	t      *testing.T
	env    *kubetest.Env
	dp     *testbin.Proc
	dpURL  string
	relay  *relay // every agent reaches the control plane through it (--public-url)
	agents []*agent
}

func newCluster(t *testing.T, n int) *cluster {
	t.Helper()
	return newClusterOn(t, kubetest.RequireFull(t), n)
}

// newClusterOn is newCluster on env (a private cluster the test may break).
func newClusterOn(t *testing.T, env *kubetest.Env, n int) *cluster {
	t.Helper()
	names := kube.Names{Namespace: env.Namespace, ClusterRole: "pipeops-agent-" + env.Namespace, HA: true}
	t.Cleanup(func() {
		_, _ = kube.RemoveIdentity(context.Background(), env.Client, names)
		_ = env.Client.CoreV1().Namespaces().Delete(context.Background(), env.Namespace+"-mon", metav1.DeleteOptions{})
	})
	c := &cluster{t: t, env: env}
	port := testbin.FreePort(t)
	c.dpURL = fmt.Sprintf("http://127.0.0.1:%d", port)
	c.relay = startRelay(t, fmt.Sprintf("127.0.0.1:%d", port))
	c.dp = testbin.Start(t, testbin.Build(t, "pipeops-devplane"), nil, "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--token", token,
		"--public-url", "http://"+c.relay.addr())
	testbin.Eventually(t, 10*time.Second, "the devplane listens", func() bool {
		conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 200*time.Millisecond)
		if err == nil {
			conn.Close()
		}
		return err == nil
	})
	bin := testbin.Build(t, "pipeops-agent")
	for i := range n {
		name := fmt.Sprintf("node-%c", 'a'+i)
		a := &agent{t: t, name: name, bin: bin, dir: testbin.ShortTempDir(t), out: &testbin.Output{}}
		f := testbin.WriteAgentConfig(t, a.dir, testbin.AgentConfig{
			Name: "e2e-ha", APIURL: "http://" + c.relay.addr(), Kubeconfig: env.Kubeconfig,
			// Each agent has its own id, as on three hosts: only the
			// shared identity makes them one cluster.
			Agent:      "  id: agent-" + name + "\n",
			Kubernetes: "  namespace: " + env.Namespace + "\n",
			// The monitoring loop runs with every component off: a round
			// only shows that the loop runs, on the leader alone.
			Extra: fmt.Sprintf(haConfig, name) + "monitoring:\n  enabled: true\n  namespace: " + env.Namespace + "-mon\n  components: {" +
				"metrics_server: {enabled: false}, vpa: {enabled: false}, coredns: {enabled: false}, traefik: {enabled: false}, " +
				"cert_manager: {enabled: false}, prometheus: {enabled: false}, grafana: {enabled: false}, loki: {enabled: false}}\n",
		})
		a.port, a.socket, a.cfg = f.Port, f.Socket, f.Config
		t.Cleanup(func() {
			a.stop()
			if t.Failed() || os.Getenv("HA_TEST_VERBOSE") != "" {
				t.Logf("%s output:\n%s", name, a.out.String())
			}
		})
		c.agents = append(c.agents, a)
	}
	return c
}

func (c *cluster) startAll() {
	for _, a := range c.agents {
		a.start()
	}
}

// clusters is what the devplane's admin API shows.
func (c *cluster) clusters() []devplane.ClusterInfo {
	var cs []devplane.ClusterInfo
	c.getJSON("/admin/clusters", &cs)
	return cs
}

// only is the one cluster the devplane knows (zero value otherwise).
func (c *cluster) only() devplane.ClusterInfo {
	cs := c.clusters()
	if len(cs) != 1 {
		return devplane.ClusterInfo{}
	}
	return cs[0]
}

func (c *cluster) getJSON(path string, v any) {
	resp, err := http.Get(c.dpURL + path)
	if err != nil {
		return
	}
	defer resp.Body.Close()
	_ = json.NewDecoder(resp.Body).Decode(v)
}

// wireClean fails the test on any message the spec does not allow.
func (c *cluster) wireClean() {
	c.t.Helper()
	var r devplane.WireReport
	c.getJSON("/admin/wire", &r)
	if len(r.Violations) > 0 {
		c.t.Fatalf("the devplane saw messages the spec does not allow: %+v", r.Violations)
	}
	if r.Seen["register"] == 0 || r.Seen["heartbeat"] == 0 {
		c.t.Fatalf("wire report %+v: want register and heartbeat seen", r.Seen)
	}
}

// proxiedBody is one call through the front door: its status and body.
func (c *cluster) proxiedBody(clusterID string) (int, string) {
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(c.dpURL + "/clusters/" + clusterID + "/k8s/api/v1/namespaces/" + c.env.Namespace)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, string(b)
}

// proxied is one call through the control plane's front door to the API
// server, as the control plane makes them: nil when it answered 200.
func (c *cluster) proxied(clusterID string) error {
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(c.dpURL + "/clusters/" + clusterID + "/k8s/api/v1/namespaces/" + c.env.Namespace)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("HTTP %d: %s", resp.StatusCode, b)
	}
	return nil
}

// kubectl runs the real kubectl through the front door.
func (c *cluster) kubectl(clusterID string, args ...string) (string, error) {
	resp, err := http.Get(c.dpURL + "/admin/frontdoor/kubeconfig?cluster_id=" + clusterID)
	if err != nil {
		return "", err
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	f := c.t.TempDir() + "/frontdoor.kubeconfig"
	if err := os.WriteFile(f, b, 0o600); err != nil {
		return "", err
	}
	out, err := exec.Command(c.env.Bin+"/kubectl", append([]string{"--kubeconfig", f, "--request-timeout", "10s"}, args...)...).CombinedOutput()
	return string(out), err
}

// leader is the agent whose status says it leads (nil unless exactly one).
func (c *cluster) leader() *agent {
	var out *agent
	for _, a := range c.agents {
		if a.proc == nil {
			continue
		}
		st, err := a.ha()
		if err == nil && st.Role == apitype.HALeader {
			if out != nil {
				return nil
			}
			out = a
		}
	}
	return out
}

// agent is one pipeops-agent process with HA on.
type agent struct {
	t      *testing.T
	name   string
	bin    string
	dir    string
	cfg    string
	port   int
	socket string
	proc   *testbin.Proc
	out    *testbin.Output
}

func (a *agent) start() {
	a.proc = testbin.StartTo(a.t, a.out, a.bin, testbin.AgentEnv(token), "run", "--config", a.cfg)
}

func (a *agent) stop() {
	if a.proc != nil {
		a.proc.Stop()
		a.proc = nil
	}
}

func (a *agent) kill() {
	a.proc.Kill()
	a.proc = nil
}

func (a *agent) ctl(args ...string) ([]byte, error) {
	return exec.Command(testbin.Build(a.t, "pipeopsctl"), append([]string{"--socket", a.socket}, args...)...).Output()
}

func (a *agent) status() (apitype.StatusResponse, error) {
	var st apitype.StatusResponse
	out, err := a.ctl("status", "--json")
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal(out, &st)
}

func (a *agent) ha() (apitype.HAStatus, error) {
	var st apitype.HAStatus
	out, err := a.ctl("ha", "status", "--json")
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal(out, &st)
}

// relay is a TCP relay between the agents and the control plane that
// counts what an agent sends on each connection. When the control plane closes a
// connection, the relay keeps reading the agent's side (and counting), so
// anything the agent writes afterwards is seen.
type relay struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  []*relayConn
}

type relayConn struct {
	ws        bool // a WebSocket upgrade (the link), not a REST call
	fromAgent atomic.Int64
	upClosed  atomic.Bool
	agentGone atomic.Bool
}

func startRelay(t *testing.T, target string) *relay {
	t.Helper()
	r := &relay{target: target}
	r.ln = testbin.ServeTCP(t, "127.0.0.1:0", r.serve)
	return r
}

func (r *relay) addr() string { return r.ln.Addr().String() }

func (r *relay) serve(down net.Conn) {
	defer down.Close()
	up, err := net.Dial("tcp", r.target)
	if err != nil {
		return
	}
	buf := make([]byte, 32<<10)
	n, err := down.Read(buf)
	if err != nil {
		up.Close()
		return
	}
	rc := &relayConn{ws: strings.Contains(strings.ToLower(string(buf[:n])), "upgrade: websocket")}
	rc.fromAgent.Add(int64(n))
	_, _ = up.Write(buf[:n])
	r.mu.Lock()
	r.conns = append(r.conns, rc)
	r.mu.Unlock()
	go func() {
		_, _ = io.Copy(down, up)
		rc.upClosed.Store(true)
	}()
	for {
		n, err := down.Read(buf)
		if n > 0 {
			rc.fromAgent.Add(int64(n))
			if !rc.upClosed.Load() {
				_, _ = up.Write(buf[:n])
			}
		}
		if err != nil {
			rc.agentGone.Store(true)
			up.Close()
			return
		}
	}
}

// links are the WebSocket connections through the relay, oldest first.
func (r *relay) links() []*relayConn {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*relayConn
	for _, c := range r.conns {
		if c.ws {
			out = append(out, c)
		}
	}
	return out
}

// describe is the agents' roles, for failure messages.
func (c *cluster) describe() string {
	var b strings.Builder
	for _, a := range c.agents {
		st, err := a.ha()
		fmt.Fprintf(&b, "%s: %+v %v\n", a.name, st, err)
	}
	fmt.Fprintf(&b, "devplane: %+v\n", c.clusters())
	return b.String()
}

// runs reports whether the loop behind a health condition ("routes",
// "monitoring") has run on this agent: only then does it report.
func runs(st apitype.StatusResponse, condition string) bool {
	for _, c := range st.Conditions {
		if c.Name == condition {
			return true
		}
	}
	return false
}
