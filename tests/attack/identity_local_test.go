package attack

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

// A web page the operator opens points its own DNS name at 127.0.0.1 (DNS
// rebinding) and reads the agent's loopback endpoints from the browser: the
// requests arrive with the page's host name in Host.
func TestADNSRebindingPageCannotReadTheAgentsLocalEndpoints(t *testing.T) {
	env := kubetest.Cluster(t)
	_, url := identPlainPlane(t)
	a := identStartAgent(t, env, url, "", "")
	get := func(path, host string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d%s", a.port, path), nil)
		req.Host = host
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return resp.StatusCode, string(b)
	}
	local := fmt.Sprintf("127.0.0.1:%d", a.port)
	testbin.Eventually(t, 30*time.Second, "the status server", func() bool { c, _ := get("/health", local); return c == http.StatusOK }, a.logs)
	rebound := fmt.Sprintf("rebind.attacker.example:%d", a.port)
	for _, path := range []string{"/metrics", "/health", "/ready", "/version", "/api/status"} {
		if code, body := get(path, rebound); code != http.StatusForbidden {
			t.Errorf("GET %s with Host %s = %d; want 403\n%.300s", path, rebound, code, body)
		}
	}
	// The operator's own requests still work.
	for _, host := range []string{local, fmt.Sprintf("localhost:%d", a.port)} {
		if code, body := get("/metrics", host); code != http.StatusOK || !strings.Contains(body, "pipeops_agent_") {
			t.Errorf("GET /metrics with Host %s = %d; want 200 with the agent's metrics", host, code)
		}
	}
}

// Settings that hand an attacker something are not silent: the agent says
// so loudly (at Warn, in the journal) as it starts.
func TestAnAgentRunningWithInsecureSettingsSaysSoAtStart(t *testing.T) {
	env := kubetest.Cluster(t)
	_, url := identPlainPlane(t) // a plain-text api_url
	a := identStartAgent(t, env, url, "  tls:\n    insecure_skip_verify: true\n", "")
	for _, field := range []string{"pipeops.tls.insecure_skip_verify", "pipeops.api_url"} {
		testbin.Eventually(t, 30*time.Second, "a start-up warning about "+field, func() bool {
			for _, line := range strings.Split(a.out.String(), "\n") {
				if strings.Contains(line, `"level":"WARN"`) && strings.Contains(line, "INSECURE SETTING "+field) {
					return true
				}
			}
			return false
		}, a.logs)
	}
}
