// Package kubectl proves the commands operators use when something is wrong
// end to end on the real path: the real kubectl → pipeops-devplane → the
// pipeops-agent binary → kube-apiserver → the node's kubelet API (kwok's
// server in the test cluster, reached with the API server's kubelet client
// certificate; see scripts/k8s/cluster.sh and docs/kubernetes.md).
package kubectl

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pipeops/pipeops-vm-agent/internal/devplane"
	"github.com/pipeops/pipeops-vm-agent/internal/kube"
	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

func TestMain(m *testing.M) { kubetest.Main(m) }

const token = "e2e-kubectl-token"

// door is one way the front door relays kubectl's WebSockets: the raw
// frames of the reference control plane or the channel translation of the
// PipeOps control plane, each asking the API server for the subprotocol
// kubectl chose (v5.channel.k8s.io) or for v4.channel.k8s.io.
type door struct {
	name string
	opts devplane.FrontDoorOptions
}

var doors = []door{
	{"raw frames, v5", devplane.FrontDoorOptions{}},
	{"raw frames, v4", devplane.FrontDoorOptions{Version: "v4"}},
	{"translated channels, v5", devplane.FrontDoorOptions{Translated: true}},
	{"translated channels, v4", devplane.FrontDoorOptions{Translated: true, Version: "v4"}},
}

// stack is one pipeops-devplane and one pipeops-agent in front of the test
// cluster, shared by every subtest of a test.
type stack struct {
	env        *kubetest.Env
	node       kubetest.Node
	dir        string
	agent      *testbin.Proc
	agentPort  int
	socket     string
	clusterID  string
	planeURL   string
	kubeconfig map[devplane.FrontDoorOptions]string
}

// startStack runs the devplane and the agent. The agent keeps its
// ServiceAccount and RBAC in a namespace of its own, <test namespace>-agent
// (its ClusterRole is pipeops-agent-<that namespace>), so it never shares
// them with agents that other test packages run against the same cluster.
// The test's pods live in the test's namespace: the agent's own namespace
// is protected, and the control plane may exec into pods only where the
// agent granted its workload role (docs/kubernetes.md).
func startStack(t *testing.T) *stack {
	t.Helper()
	env, node := kubetest.RequireNode(t)
	s := &stack{env: env, node: node, dir: testbin.ShortTempDir(t), kubeconfig: map[devplane.FrontDoorOptions]string{}}
	port := testbin.FreePort(t)
	s.planeURL = fmt.Sprintf("http://127.0.0.1:%d", port)
	testbin.Start(t, testbin.Build(t, "pipeops-devplane"), nil, "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--token", token)
	names := kube.NamesFor(env.Namespace+"-agent", "")
	f := testbin.WriteAgentConfig(t, s.dir, testbin.AgentConfig{Name: "e2e-kubectl", APIURL: s.planeURL,
		Kubeconfig: env.Kubeconfig, Kubernetes: "  namespace: " + names.Namespace + "\n"})
	s.agentPort, s.socket = f.Port, f.Socket
	s.agent = testbin.Start(t, testbin.Build(t, "pipeops-agent"), testbin.AgentEnv(token), "run", "--config", f.Config)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = kube.RemoveIdentity(ctx, env.Client, names)
		_ = env.Client.CoreV1().Namespaces().Delete(ctx, names.Namespace, metav1.DeleteOptions{})
	})
	testbin.Eventually(t, 90*time.Second, "the agent registered and ready", func() bool {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/ready", s.agentPort))
		if err != nil {
			return false
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return false
		}
		s.clusterID = s.connectedCluster()
		if s.clusterID == "" {
			return false
		}
		_, err = env.Client.RbacV1().RoleBindings(env.Namespace).Get(context.Background(), names.WorkloadRole(), metav1.GetOptions{})
		return err == nil // the workload role granted in the test's namespace
	}, s.agent.String)
	for _, d := range doors {
		p := filepath.Join(s.dir, "kubeconfig-"+strings.NewReplacer(" ", "", ",", "-").Replace(d.name))
		if err := os.WriteFile(p, devplane.FrontDoorKubeconfigWith(s.planeURL, s.clusterID, "", d.opts), 0o600); err != nil {
			t.Fatal(err)
		}
		s.kubeconfig[d.opts] = p
	}
	return s
}

func (s *stack) connectedCluster() string {
	resp, err := http.Get(s.planeURL + "/admin/clusters")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var cs []devplane.ClusterInfo
	if json.NewDecoder(resp.Body).Decode(&cs) != nil || len(cs) != 1 || !cs[0].Connected {
		return ""
	}
	return cs[0].ID
}

// kubectl is one kubectl run through the agent.
type kubectl struct {
	cmd            *exec.Cmd
	stdout, stderr *testbin.Output
	done           chan struct{}
	err            error
}

// command prepares kubectl ARGS through door d, in the test's namespace.
// HOME is the test's directory, so kubectl's discovery cache is its own.
func (s *stack) command(ctx context.Context, d devplane.FrontDoorOptions, args ...string) *exec.Cmd {
	args = append([]string{"--kubeconfig", s.kubeconfig[d], "-n", s.env.Namespace}, args...)
	cmd := exec.CommandContext(ctx, filepath.Join(s.env.Bin, "kubectl"), args...)
	cmd.Env = append(os.Environ(), "HOME="+s.dir)
	return cmd
}

// start runs kubectl in the background; the test ends it if it is still running.
func (s *stack) start(t *testing.T, d devplane.FrontDoorOptions, stdin string, args ...string) *kubectl {
	t.Helper()
	k := &kubectl{cmd: s.command(context.Background(), d, args...), stdout: &testbin.Output{}, stderr: &testbin.Output{}, done: make(chan struct{})}
	k.cmd.Stdout, k.cmd.Stderr = k.stdout, k.stderr
	if stdin != "" {
		k.cmd.Stdin = strings.NewReader(stdin)
	}
	if err := k.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { k.err = k.cmd.Wait(); close(k.done) }()
	t.Cleanup(func() {
		select {
		case <-k.done:
		default:
			_ = k.cmd.Process.Kill()
			<-k.done
		}
	})
	return k
}

// wait waits for kubectl to exit and returns its exit code.
func (k *kubectl) wait(t *testing.T, within time.Duration) int {
	t.Helper()
	select {
	case <-k.done:
	case <-time.After(within):
		t.Fatalf("kubectl %s still running after %s\nstdout: %s\nstderr: %s", strings.Join(k.cmd.Args[1:], " "), within, k.stdout, k.stderr)
	}
	return k.cmd.ProcessState.ExitCode()
}

// run runs kubectl to its end and returns stdout, stderr and the exit code.
func (s *stack) run(t *testing.T, d devplane.FrontDoorOptions, stdin string, args ...string) (string, string, int) {
	t.Helper()
	k := s.start(t, d, stdin, args...)
	code := k.wait(t, 60*time.Second)
	return k.stdout.String(), k.stderr.String(), code
}

// metric reads one sample from a Prometheus text endpoint (the agent's
// /metrics, or the API server's through the admin kubeconfig); -1 when absent.
func metric(text []byte, name string) float64 {
	for _, line := range strings.Split(string(text), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			var f float64
			if _, err := fmt.Sscan(v, &f); err == nil {
				return f
			}
		}
	}
	return -1
}

func (s *stack) agentMetric(name string) float64 {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", s.agentPort))
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	return metric(b.Bytes(), name)
}

// apiserverMetric reads a gauge from the API server's /metrics as admin. A
// series the API server has not created yet (no such call so far) is 0.
func (s *stack) apiserverMetric(t *testing.T, name string) float64 {
	t.Helper()
	b, err := s.env.Client.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(context.Background())
	if err != nil {
		t.Fatalf("API server /metrics: %v", err)
	}
	return max(metric(b, name), 0)
}

// listen is a TCP server on a free loopback port that serves each
// connection with handle.
func listen(t *testing.T, handle func(net.Conn)) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return l.Addr().(*net.TCPAddr).Port
}
