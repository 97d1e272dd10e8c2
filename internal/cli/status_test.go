package cli

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/localapi"
	"github.com/pipeops/pipeops-vm-agent/internal/localclient"
)

var update = flag.Bool("update", false, "rewrite golden files")

func golden(t *testing.T, name, got string) {
	t.Helper()
	p := filepath.Join("testdata", name+".golden")
	if *update {
		os.WriteFile(p, []byte(got), 0o644)
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("missing %s (run go test ./internal/cli -update): %v", p, err)
	}
	if got != string(want) {
		t.Errorf("output differs from %s:\n--- got\n%s--- want\n%s", p, got, want)
	}
}

type snapshot struct{ st apitype.StatusResponse }

func (s snapshot) Status(context.Context) apitype.StatusResponse { return s.st }

// testEnv runs commands against a real local API socket and stubbed systemctl.
func testEnv(t *testing.T, st *apitype.StatusResponse, systemctlOut string, systemctlErr error) (*env, *bytes.Buffer, *bytes.Buffer) {
	t.Helper()
	dir, _ := os.MkdirTemp("", "po")
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "agent.sock")
	if st != nil {
		srv := localapi.New(localapi.Options{Socket: sock, Status: snapshot{*st}})
		ln, err := srv.Listen()
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { srv.Serve(ctx, ln); close(done) }()
		t.Cleanup(func() { cancel(); <-done })
	}
	var out, errb bytes.Buffer
	e := &env{stdout: &out, stderr: &errb, stdin: strings.NewReader(""), client: &localclient.Client{Socket: sock},
		systemctl: func(ctx context.Context, args ...string) (string, error) { return systemctlOut, systemctlErr },
		getenv:    func(string) string { return "" }, now: func() time.Time { return fixedNow }}
	return e, &out, &errb
}

var fixedNow = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

func sampleStatus() *apitype.StatusResponse {
	now := fixedNow
	return &apitype.StatusResponse{
		Version: "1.2.3", AgentID: "agent-0011223344556677", ClusterName: "prod", ClusterID: "c-42", Ready: true,
		Link: apitype.LinkStatus{State: apitype.LinkConnected, Mode: "gateway", ConnectedSince: now.Add(-90 * time.Second),
			LastHeartbeat: now.Add(-10 * time.Second), Reconnects: 2, LastError: "dial tcp: connection refused", LastErrorAt: now.Add(-5 * time.Minute)},
		Kubernetes: apitype.KubeStatus{Reachable: true, Server: "https://127.0.0.1:6443", Version: "v1.36.3", Nodes: 1, Pods: 31,
			CPUUsage: "12.5%", MemoryUsage: "48.0%", CPUSource: "requests on node-1", MemorySource: "requests on node-1"},
		Proxy:      apitype.ProxyStatus{InFlight: 1, Requests: 120, Errors: 3},
		Tunnel:     apitype.TunnelStatus{Active: true, ActiveStreams: 4, Forwards: []apitype.Forward{{Name: "agent-http", LocalAddr: "127.0.0.1:8080"}}},
		Routes:     apitype.RoutesStatus{Enabled: true, Count: 3, RoutingMode: "tunnel", LastSync: now.Add(-time.Minute), LastSyncResult: "ok"},
		Monitoring: apitype.MonitoringStatus{Enabled: true, Releases: []apitype.Release{{Component: "grafana", State: "ready"}, {Component: "loki", State: "failed", Reason: "timed out waiting for Ready"}}},
	}
}

func TestStatusHumanViewMatchesGolden(t *testing.T) {
	e, out, _ := testEnv(t, sampleStatus(), "", nil)
	if code := run(context.Background(), e, []string{"pipeopsctl", "status"}); code != ExitOK {
		t.Fatalf("exit %d", code)
	}
	golden(t, "status", out.String())
}

func TestStatusJSONCarriesTheSnapshot(t *testing.T) {
	e, out, _ := testEnv(t, sampleStatus(), "", nil)
	if code := run(context.Background(), e, []string{"pipeopsctl", "status", "--json"}); code != ExitOK {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{`"agent_id": "agent-0011223344556677"`, `"state": "connected"`, `"routing_mode": "tunnel"`} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--json lacks %s:\n%s", want, out)
		}
	}
}

func TestStatusWithoutAgentExplainsTheServiceState(t *testing.T) {
	cases := []struct {
		name, show string
		err        error
		want       string
	}{
		{"not installed", "LoadState=not-found\nActiveState=inactive\n", nil, "pipeopsctl install"},
		{"failed", "LoadState=loaded\nActiveState=failed\nResult=exit-code\n", nil, "pipeopsctl logs"},
		{"stopped", "LoadState=loaded\nActiveState=inactive\n", nil, "systemctl start pipeops-agent"},
		{"no systemd", "", errors.New("System has not been booted with systemd"), "pipeops-agent run"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e, _, errb := testEnv(t, nil, tc.show, tc.err)
			if code := run(context.Background(), e, []string{"pipeopsctl", "status"}); code != ExitNotRunning {
				t.Fatalf("exit %d; want %d", code, ExitNotRunning)
			}
			if !strings.Contains(errb.String(), tc.want) || strings.Contains(errb.String(), "dial unix") {
				t.Fatalf("stderr = %q; want a hint containing %q", errb, tc.want)
			}
			golden(t, "status-"+strings.ReplaceAll(tc.name, " ", "-"), strings.ReplaceAll(errb.String(), e.client.SocketPath(), "SOCKET"))
		})
	}
}

func TestConfigShowRedactsTheToken(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "agent.yaml")
	os.WriteFile(cfg, []byte("version: 1\npipeops:\n  token: super-secret-token\n"), 0o600)
	e, out, _ := testEnv(t, nil, "", nil)
	if code := run(context.Background(), e, []string{"pipeopsctl", "config", "show", "--config", cfg}); code != ExitOK {
		t.Fatalf("exit %d", code)
	}
	if strings.Contains(out.String(), "super-secret-token") || !strings.Contains(out.String(), "[redacted]") {
		t.Fatalf("config show leaked or lost the token:\n%s", out)
	}
}

func TestConfigValidateReportsFieldAndFails(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "agent.yaml")
	os.WriteFile(cfg, []byte("version: 1\nagent:\n  port: 0\npipeops:\n  token: t\n"), 0o600)
	e, _, errb := testEnv(t, nil, "", nil)
	if code := run(context.Background(), e, []string{"pipeopsctl", "config", "validate", "--config", cfg}); code != ExitError {
		t.Fatalf("exit %d; want 1", code)
	}
	if !strings.Contains(errb.String(), "agent.port") {
		t.Fatalf("stderr = %q; want the field name", errb)
	}
}
