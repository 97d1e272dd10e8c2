package testbin

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// AgentConfig is what an end-to-end test sets in pipeops-agent's config.
// The rest is common to every test: state and socket in the test's
// directory, 1 s heartbeats and fast reconnects.
type AgentConfig struct {
	Name       string
	Port       int // 0: a free port
	APIURL     string
	Kubeconfig string
	// Agent, PipeOps and Kubernetes are more lines of those sections, each
	// line indented two spaces; Extra is more top-level sections.
	Agent, PipeOps, Kubernetes, Extra string
}

// AgentFiles are where WriteAgentConfig put things.
type AgentFiles struct {
	Config, Socket, StateDir string
	Port                     int
}

// WriteAgentConfig writes dir/agent.yaml for c.
func WriteAgentConfig(t testing.TB, dir string, c AgentConfig) AgentFiles {
	t.Helper()
	if c.Port == 0 {
		c.Port = FreePort(t)
	}
	f := AgentFiles{Config: filepath.Join(dir, "agent.yaml"), Socket: filepath.Join(dir, "agent.sock"),
		StateDir: filepath.Join(dir, "state"), Port: c.Port}
	if !strings.Contains(c.Agent, "public_ip_services:") {
		// Tests never ask the internet for this host's address.
		c.Agent += "  public_ip_services: []\n"
	}
	yaml := fmt.Sprintf(`version: 1
agent:
  name: %s
  port: %d
  state_dir: %s
  socket: %s
  heartbeat_interval: 1s
%spipeops:
  api_url: %s
  reconnect: {interval: 200ms, max_interval: 1s}
%skubernetes:
  kubeconfig: %s
%s%s`, c.Name, c.Port, f.StateDir, f.Socket, c.Agent, c.APIURL, c.PipeOps, c.Kubeconfig, c.Kubernetes, c.Extra)
	if err := os.WriteFile(f.Config, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// AgentEnv is the environment the end-to-end tests run pipeops-agent with:
// the token, JSON logs, no systemd notify socket, then extra.
func AgentEnv(token string, extra ...string) []string {
	return append([]string{"PIPEOPS_TOKEN=" + token, "PIPEOPS_LOG_FORMAT=json", "NOTIFY_SOCKET="}, extra...)
}
