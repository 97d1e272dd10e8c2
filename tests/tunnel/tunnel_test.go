// Package tunnel tests the reverse tunnel end to end: the real
// pipeops-agent binary against the real pipeops-devplane binary (whose
// --forward listeners turn local connections into yamux streams) and a real
// kube-apiserver (internal/kubetest) for Service resolution.
package tunnel

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

func TestMain(m *testing.M) { kubetest.Main(m) }

const token = "e2e-tunnel-token"

func TestCurlOnAGatewayForwardReachesTheAgentAndAClusterService(t *testing.T) {
	env := kubetest.Cluster(t)

	// A "cluster Service" backed by a process on this host: the API server
	// rejects loopback endpoints, so it is an ExternalName to localhost,
	// which the agent reaches only because security.allowed_target_cidrs
	// lists 127.0.0.1 (tests/attack shows the refusal without it).
	web := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "web service saw %s", r.URL.Path)
	})}
	wln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go web.Serve(wln)
	defer web.Close()
	webPort := wln.Addr().(*net.TCPAddr).Port
	if _, err := env.Client.CoreV1().Services(env.Namespace).Create(context.Background(), &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "localhost"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	agentPort, dpPort, fwdAgent, fwdWeb := testbin.FreePort(t), testbin.FreePort(t), testbin.FreePort(t), testbin.FreePort(t)
	dp := testbin.Start(t, testbin.Build(t, "pipeops-devplane"), nil,
		"--listen", fmt.Sprintf("127.0.0.1:%d", dpPort), "--token", token, "--log-level", "debug",
		"--forward", fmt.Sprintf("127.0.0.1:%d=agent-http", fwdAgent),
		"--forward", fmt.Sprintf("127.0.0.1:%d=web.%s:%d", fwdWeb, env.Namespace, webPort))

	f := testbin.WriteAgentConfig(t, testbin.ShortTempDir(t), testbin.AgentConfig{Name: "e2e-tunnel", Port: agentPort,
		APIURL: fmt.Sprintf("http://127.0.0.1:%d", dpPort), Kubeconfig: env.Kubeconfig,
		Extra: fmt.Sprintf("tunnel:\n  enabled: true\n  forwards:\n    - name: agent-http\n      local_addr: 127.0.0.1:%d\n"+
			"security:\n  allowed_target_cidrs: [127.0.0.1/32]\n", agentPort)})
	socket := f.Socket
	agent := testbin.Start(t, testbin.Build(t, "pipeops-agent"), testbin.AgentEnv(token), "run", "--config", f.Config)

	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}
	get := func(port int, path string) (int, string) {
		resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d%s", port, path))
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	var last string
	testbin.Eventually(t, 90*time.Second, "curl through the agent-http forward reaches the agent's /version", func() bool {
		code, body := get(fwdAgent, "/version")
		last = body
		return code == 200 && strings.Contains(body, "0.0.0-e2e")
	}, func() string { return last + "\nagent:\n" + agent.String() + "\ndevplane:\n" + dp.String() })
	testbin.Eventually(t, 60*time.Second, "curl through the Service forward reaches the host process", func() bool {
		code, body := get(fwdWeb, "/hello")
		last = body
		return code == 200 && body == "web service saw /hello"
	}, func() string { return last + "\nagent:\n" + agent.String() })

	ctl := testbin.Build(t, "pipeopsctl")
	var st apitype.StatusResponse
	testbin.Eventually(t, 10*time.Second, "pipeopsctl status shows the tunnel", func() bool {
		out, err := exec.Command(ctl, "--socket", socket, "status", "--json").Output()
		if err != nil || json.Unmarshal(out, &st) != nil {
			return false
		}
		return st.Tunnel.Active && len(st.Tunnel.Forwards) == 1 && st.Tunnel.Forwards[0].Name == "agent-http" && st.Tunnel.StreamsTotal >= 2
	}, func() string { return fmt.Sprintf("%+v", st.Tunnel) })
	out, err := exec.Command(ctl, "--socket", socket, "status").Output()
	if err != nil || !strings.Contains(string(out), "agent-http") {
		t.Fatalf("pipeopsctl status does not list the forward: %v\n%s", err, out)
	}
}
