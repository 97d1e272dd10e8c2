package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/localapi"
	"github.com/pipeops/pipeops-vm-agent/internal/localclient"
)

func sampleMonitoring() apitype.MonitoringStatus {
	return apitype.MonitoringStatus{
		Enabled: true, Profile: "medium", LastRound: fixedNow.Add(-12 * time.Second),
		Releases: []apitype.Release{
			{Component: "metrics_server", Name: "metrics-server", Namespace: "kube-system", Chart: "metrics-server", Version: "3.12.2", Revision: 1, State: apitype.ReleaseReady},
			{Component: "coredns", Name: "coredns", Namespace: "kube-system", State: apitype.ReleaseReady,
				Reason: "*.pipeops.internal resolves as *.cluster.local (coredns-custom)"},
			{Component: "traefik", Name: "traefik", Namespace: "pipeops-system", Chart: "traefik", Version: "33.1.0", State: apitype.ReleaseSkipped,
				Reason: "the cluster already has an ingress controller (IngressClass nginx, controller k8s.io/ingress-nginx)"},
			{Component: "cert_manager", Name: "cert-manager", Namespace: "cert-manager", Chart: "cert-manager", Version: "v1.13.3", Revision: 1,
				State: apitype.ReleaseReady, Reason: "ClusterIssuers letsencrypt-prod, letsencrypt-production (ACME, http01 via IngressClass nginx)"},
			{Component: "prometheus", Name: "kube-prometheus-stack", Namespace: "pipeops-monitoring", Chart: "kube-prometheus-stack", Version: "65.1.0", Revision: 2,
				State: apitype.ReleaseReady, Reason: "prometheus-operator 0.70.0 CRDs"},
			{Component: "loki", Name: "loki", Namespace: "pipeops-monitoring", Chart: "loki-stack", Version: "2.10.2", Revision: 1, State: apitype.ReleaseFailed,
				Reason: "not ready after 5m0s: StatefulSet pipeops-monitoring/loki: 0 of 1 replicas ready (pod loki-0 unschedulable: 0/1 nodes are available)"},
			{Component: "vpa", Name: "vpa", Namespace: "pipeops-system", Chart: "vpa", State: apitype.ReleaseDisabled,
				Reason: "off in the configuration (monitoring.components.vpa.enabled: false)"},
		},
		Endpoints: []apitype.MonitoringEndpoint{
			{Name: "prometheus", URL: "http://kube-prometheus-stack-prometheus.pipeops-monitoring.svc.cluster.local:9090"},
			{Name: "grafana", URL: "http://kube-prometheus-stack-grafana.pipeops-monitoring.svc.cluster.local:3000"},
		},
		LastError: "pipeops-monitoring/loki: not ready after 5m0s", NextRetry: fixedNow.Add(90 * time.Second),
	}
}

// monitoringAgent is a real local API socket serving the monitoring routes
// over canned answers: an action sends its events, then fails with failure
// if set (the local API adds the final line).
type monitoringAgent struct {
	status  apitype.MonitoringStatus
	events  []apitype.MonitoringEvent
	failure string
	mu      sync.Mutex
	posts   []string
}

var _ localapi.Monitoring = (*monitoringAgent)(nil)

func (a *monitoringAgent) Status() apitype.MonitoringStatus { return a.status }

func (a *monitoringAgent) Install(_ context.Context, emit func(apitype.MonitoringEvent)) error {
	return a.act("/v1/monitoring/install", emit)
}

func (a *monitoringAgent) Uninstall(_ context.Context, emit func(apitype.MonitoringEvent)) error {
	return a.act("/v1/monitoring/uninstall", emit)
}

func (a *monitoringAgent) act(path string, emit func(apitype.MonitoringEvent)) error {
	a.mu.Lock()
	a.posts = append(a.posts, path)
	a.mu.Unlock()
	for _, ev := range a.events {
		emit(ev)
	}
	if a.failure != "" {
		return errors.New(a.failure)
	}
	return nil
}

func (a *monitoringAgent) start(t *testing.T) *env {
	t.Helper()
	dir, _ := os.MkdirTemp("", "po")
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "agent.sock")
	srv := localapi.New(localapi.Options{Socket: sock, Status: snapshot{}, Monitoring: a})
	ln, err := srv.Listen()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return &env{stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}, stdin: strings.NewReader(""), client: &localclient.Client{Socket: sock},
		getenv: func(string) string { return "" }, now: steppingClock()}
}

// steppingClock advances one second per reading, so elapsed times in the
// output are deterministic.
func steppingClock() func() time.Time {
	var mu sync.Mutex
	t := fixedNow
	return func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		t = t.Add(time.Second)
		return t
	}
}

func installEvents() []apitype.MonitoringEvent {
	rel := func(name, state, reason string) apitype.MonitoringEvent {
		return apitype.MonitoringEvent{Time: fixedNow, Release: apitype.Release{Name: name, State: state, Reason: reason}}
	}
	return []apitype.MonitoringEvent{
		rel("metrics-server", apitype.ReleaseInstalling, "waiting for workloads to become ready"),
		rel("metrics-server", apitype.ReleaseReady, ""),
		rel("kube-prometheus-stack", apitype.ReleaseInstalling, "upgrading kube-prometheus-stack 65.1.0 (values changed)"),
		rel("kube-prometheus-stack", apitype.ReleaseReady, ""),
	}
}

func TestMonitoringCommandsMatchGolden(t *testing.T) {
	ready := sampleMonitoring()
	ready.Releases, ready.LastError, ready.NextRetry = ready.Releases[:1], "", time.Time{}
	for _, tc := range []struct {
		name     string
		args     []string
		agent    *monitoringAgent
		wantCode int
		wantPost string
	}{
		{name: "monitoring-status", args: []string{"monitoring", "status"}, agent: &monitoringAgent{status: sampleMonitoring()}},
		{name: "monitoring-status-disabled", args: []string{"monitoring", "status"}, agent: &monitoringAgent{status: apitype.MonitoringStatus{}}},
		{name: "monitoring-install", args: []string{"monitoring", "install"}, agent: &monitoringAgent{status: ready, events: installEvents()}, wantPost: "/v1/monitoring/install"},
		{name: "monitoring-install-failed", args: []string{"monitoring", "install"}, wantCode: ExitError, wantPost: "/v1/monitoring/install",
			agent: &monitoringAgent{status: sampleMonitoring(), events: installEvents()[:1], failure: "pipeops-monitoring/loki: not ready after 5m0s"}},
		{name: "monitoring-uninstall", args: []string{"monitoring", "uninstall", "--yes"}, wantPost: "/v1/monitoring/uninstall",
			agent: &monitoringAgent{status: apitype.MonitoringStatus{Enabled: true, Suspended: true}, events: []apitype.MonitoringEvent{
				{Release: apitype.Release{Name: "metrics-server", State: apitype.ReleaseUninstalling}},
				{Release: apitype.Release{Name: "metrics-server", State: apitype.ReleaseUninstalled}}}}},
		{name: "monitoring-uninstall-declined", args: []string{"monitoring", "uninstall"}, wantCode: ExitError, agent: &monitoringAgent{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := tc.agent.start(t)
			code := run(context.Background(), e, append([]string{"pipeopsctl"}, tc.args...))
			if code != tc.wantCode {
				t.Errorf("exit code = %d; want %d (stderr %q)", code, tc.wantCode, e.stderr.(*bytes.Buffer).String())
			}
			golden(t, tc.name, e.stdout.(*bytes.Buffer).String()+"--- stderr\n"+e.stderr.(*bytes.Buffer).String())
			if tc.wantPost != "" && (len(tc.agent.posts) != 1 || tc.agent.posts[0] != tc.wantPost) {
				t.Errorf("agent saw posts %v; want one %s", tc.agent.posts, tc.wantPost)
			}
			if tc.wantPost == "" && len(tc.agent.posts) != 0 {
				t.Errorf("agent saw posts %v; want none", tc.agent.posts)
			}
		})
	}
}

func TestMonitoringInstallJSONPassesEveryEventThrough(t *testing.T) {
	a := monitoringAgent{status: sampleMonitoring(), events: installEvents()}
	e := a.start(t)
	if code := run(context.Background(), e, []string{"pipeopsctl", "monitoring", "install", "--json"}); code != ExitOK {
		t.Fatalf("exit code = %d; stderr %s", code, e.stderr)
	}
	lines := strings.Split(strings.TrimSpace(e.stdout.(*bytes.Buffer).String()), "\n")
	if len(lines) != len(a.events)+1 {
		t.Fatalf("got %d NDJSON lines; want %d", len(lines), len(a.events)+1)
	}
	var last apitype.MonitoringEvent
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil || !last.Done || last.Status == nil {
		t.Fatalf("last line = %s (%v); want done with the status", lines[len(lines)-1], err)
	}
}

func TestMonitoringProgressRedrawsInPlaceOnATerminal(t *testing.T) {
	var buf bytes.Buffer
	p := &monProgress{w: &buf, tty: true, now: steppingClock(), start: fixedNow, rel: map[string]apitype.Release{}}
	for _, ev := range installEvents() {
		p.event(ev)
	}
	golden(t, "monitoring-progress-tty", strings.ReplaceAll(buf.String(), "\x1b", "<ESC>"))
}

func TestMonitoringStatusWhenTheAgentIsNotRunning(t *testing.T) {
	dir, _ := os.MkdirTemp("", "po")
	defer os.RemoveAll(dir)
	var out, errb bytes.Buffer
	e := &env{stdout: &out, stderr: &errb, client: &localclient.Client{Socket: filepath.Join(dir, "absent.sock")}, now: steppingClock()}
	if code := run(context.Background(), e, []string{"pipeopsctl", "monitoring", "status"}); code != ExitNotRunning {
		t.Fatalf("exit code = %d; want %d", code, ExitNotRunning)
	}
	if !strings.Contains(errb.String(), "hint: start it with") {
		t.Errorf("stderr = %q; want a hint", errb.String())
	}
}
