// Package e2e runs the real pipeops-agent and pipeopsctl binaries as
// separate processes, the way an operator would.
package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

type agentProc struct {
	*testbin.Proc
	socket string
	port   int
}

// startAgent runs pipeops-agent with a temp config, state dir and socket.
// The control plane URL points at a closed port: the agent must still start,
// serve its local API and report not-ready with a reason.
func startAgent(t *testing.T, cfgYAML string) *agentProc {
	t.Helper()
	bin := testbin.Build(t, "pipeops-agent")
	dir := testbin.ShortTempDir(t)
	port := testbin.FreePort(t)
	cfg := filepath.Join(dir, "agent.yaml")
	if cfgYAML == "" {
		cfgYAML = fmt.Sprintf("version: 1\nagent:\n  name: e2e\n  port: %d\n  state_dir: %s\n  socket: %s\npipeops:\n  api_url: http://127.0.0.1:%d\n",
			port, filepath.Join(dir, "state"), filepath.Join(dir, "agent.sock"), testbin.FreePort(t))
	}
	os.WriteFile(cfg, []byte(cfgYAML), 0o600)
	p := testbin.Start(t, bin, []string{"PIPEOPS_TOKEN=e2e-token", "PIPEOPS_LOG_FORMAT=json", "NOTIFY_SOCKET="}, "run", "--config", cfg)
	return &agentProc{Proc: p, socket: filepath.Join(dir, "agent.sock"), port: port}
}

func (p *agentProc) waitHTTP(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if r, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/health", p.port)); err == nil {
			r.Body.Close()
			if _, err := os.Stat(p.socket); err == nil {
				return
			}
		}
		select {
		case <-p.Done():
			t.Fatalf("agent exited early: %v\n%s", p.Err(), p.Out)
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("agent did not come up\n%s", p.Out)
}

func TestAgentStartsReportsStatusAndStopsCleanly(t *testing.T) {
	ctl := testbin.Build(t, "pipeopsctl")
	a := startAgent(t, "")
	a.waitHTTP(t)

	out, err := exec.Command(ctl, "--socket", a.socket, "status", "--json").Output()
	if err != nil {
		t.Fatalf("pipeopsctl status --json: %v\n%s", err, out)
	}
	var st map[string]any
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("status --json is not JSON: %v\n%s", err, out)
	}
	if st["version"] != testbin.TestVersion || st["cluster_name"] != "e2e" || st["ready"] != false {
		t.Fatalf("status = %v", st)
	}
	if id, _ := st["agent_id"].(string); !strings.HasPrefix(id, "agent-") || len(id) != len("agent-")+16 {
		t.Fatalf("agent_id = %q; want agent-<16 hex>", id)
	}
	if reasons, _ := st["not_ready"].([]any); len(reasons) == 0 {
		t.Fatalf("not ready without reasons: %v", st)
	}
	// The human view renders too.
	human, err := exec.Command(ctl, "--socket", a.socket, "status").CombinedOutput()
	if err != nil || !strings.Contains(string(human), "NOT READY") {
		t.Fatalf("pipeopsctl status: %v\n%s", err, human)
	}
	// /ready tells the truth while the control plane is unreachable.
	r, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/ready", a.port))
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if r.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("/ready = %d; want 503", r.StatusCode)
	}

	start := time.Now()
	a.Signal(syscall.SIGTERM)
	select {
	case <-a.Done():
		if err := a.Err(); err != nil {
			t.Fatalf("agent exit after SIGTERM = %v; want 0\n%s", err, a.Out)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("agent did not exit within 5s of SIGTERM\n%s", a.Out)
	}
	t.Logf("clean stop in %v", time.Since(start))
	if _, err := os.Stat(a.socket); !os.IsNotExist(err) {
		t.Errorf("socket %s left behind after a clean stop", a.socket)
	}
}

func TestStatusWithoutAgentExplainsAndExits3(t *testing.T) {
	ctl := testbin.Build(t, "pipeopsctl")
	dir := testbin.ShortTempDir(t)
	cmd := exec.Command(ctl, "--socket", filepath.Join(dir, "none.sock"), "status")
	cmd.Env = append(os.Environ(), "PATH="+dir) // no systemctl on PATH
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errorsAs(err, &ee) || ee.ExitCode() != 3 {
		t.Fatalf("exit = %v; want 3\n%s", err, out)
	}
	if !strings.Contains(string(out), "not running") || !strings.Contains(string(out), "hint:") || strings.Contains(string(out), "dial unix") {
		t.Fatalf("output should explain the state and what to do, not print a dial error:\n%s", out)
	}
}

func TestBadConfigExits2NamingTheField(t *testing.T) {
	bin := testbin.Build(t, "pipeops-agent")
	dir := testbin.ShortTempDir(t)
	cases := map[string]string{
		"agent.port":             "version: 1\nagent:\n  port: 99999\n",
		`unknown field "prot"`:   "version: 1\nagent:\n  prot: 80\n",
		"pipeops.api_url":        "version: 1\npipeops:\n  api_url: ftp://x\n",
		"missing \"version: 1\"": "agent:\n  port: 80\n",
	}
	for want, body := range cases {
		cfg := filepath.Join(dir, "bad.yaml")
		os.WriteFile(cfg, []byte(body), 0o600)
		cmd := exec.Command(bin, "run", "--config", cfg)
		cmd.Env = append(os.Environ(), "PIPEOPS_TOKEN=x")
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errorsAs(err, &ee) || ee.ExitCode() != 2 {
			t.Errorf("config %q: exit = %v; want 2\n%s", body, err, out)
		}
		if !strings.Contains(string(out), want) || strings.Contains(string(out), "panic") {
			t.Errorf("config %q: output does not name %s:\n%s", body, want, out)
		}
	}
	// A missing token is a config error too.
	cfg := filepath.Join(dir, "ok.yaml")
	os.WriteFile(cfg, []byte("version: 1\n"), 0o600)
	cmd := exec.Command(bin, "run", "--config", cfg)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errorsAs(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), "pipeops.token") {
		t.Fatalf("missing token: exit = %v\n%s", err, out)
	}
}
