package charts

import (
	"context"
	"log/slog"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"helm.sh/helm/v3/pkg/release"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
	"github.com/pipeops/pipeops-vm-agent/internal/monitor"
	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
	"github.com/pipeops/pipeops-vm-agent/internal/state"
)

func TestMain(m *testing.M) { kubetest.Main(m) }

const testClusterID = "c-7c0b2a1e-test"

// testChart is the absolute path of a stand-in chart in testdata/charts.
func testChart(name string) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "testdata", "charts", name)
}

// harness is one test's agent side: a state directory that survives
// "restarts" (new managers) and the options every manager gets.
type harness struct {
	t     *testing.T
	env   *kubetest.Env
	dir   string
	state *state.Store
	opts  Options
	mon   monitor.Options // the loop's options; Components, Backend and State are set per manager

	mu        sync.Mutex
	endpoints [][]Endpoint
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	env := kubetest.RequireFull(t)
	h := &harness{t: t, env: env, dir: t.TempDir()}
	h.reopenState()
	if err := h.state.Update(func(s *state.State) error { s.ClusterID = testClusterID; return nil }); err != nil {
		t.Fatal(err)
	}
	ns := env.Namespace
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
	h.opts = Options{
		Settings: monitor.Settings{
			Components: []Component{
				{Name: "metrics_server", Release: "metrics-server", Namespace: ns, Chart: testChart("metrics-server")},
				{Name: "prometheus", Release: "kube-prometheus-stack", Namespace: ns, Chart: testChart("kube-prometheus-stack")},
				{Name: "loki", Release: "loki", Namespace: ns, Chart: testChart("loki-stack")},
			},
			Grafana: true, GrafanaSubPath: true,
			APIURL: "https://api.example.test/", ClusterDomain: "corp.internal",
			CacheDir: filepath.Join(h.dir, "cache"), Timeout: time.Minute, ReadyTimeout: time.Minute,
		},
		RESTConfig:   func(context.Context) (*rest.Config, error) { return env.Config, nil },
		Log:          log,
		PollInterval: 200 * time.Millisecond,
	}
	h.mon = monitor.Options{
		Enabled: true,
		Log:     log,
		OnEndpoints: func(e []Endpoint) {
			h.mu.Lock()
			h.endpoints = append(h.endpoints, e)
			h.mu.Unlock()
		},
	}
	return h
}

// reopenState reads the state directory again, as a restarted agent does.
func (h *harness) reopenState() {
	st, err := state.Open(filepath.Join(h.dir, "state"), nil)
	if err != nil {
		h.t.Fatal(err)
	}
	h.state = st
}

// testManager is what the daemon runs, with the Helm engine in this
// process instead of a worker.
type testManager struct {
	*monitor.Manager
	e *Engine
}

func (m testManager) Calls() HelmCalls { return m.e.Calls() }

func (h *harness) manager(mod func(o *Options)) testManager {
	h.t.Helper()
	o := h.opts
	o.Components = slices.Clone(o.Components)
	if mod != nil {
		mod(&o)
	}
	e, err := New(o)
	if err != nil {
		h.t.Fatal(err)
	}
	mo := h.mon
	mo.Components, mo.Backend, mo.State = o.Components, e, h.state
	m, err := monitor.New(mo)
	if err != nil {
		h.t.Fatal(err)
	}
	return testManager{Manager: m, e: e}
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func mustRound(t *testing.T, m testManager) {
	t.Helper()
	if err := m.RunRound(ctxFor(t, 90*time.Second)); err != nil {
		t.Fatalf("round: %v\nstatus: %+v", err, m.Status())
	}
}

func releaseState(m testManager, component string) apitype.Release {
	for _, r := range m.Status().Releases {
		if r.Component == component {
			return r
		}
	}
	return apitype.Release{}
}

func requireAllReady(t *testing.T, m testManager) {
	t.Helper()
	for _, r := range m.Status().Releases {
		if r.State != apitype.ReleaseReady {
			t.Fatalf("release %s state = %s (%s); want ready", r.Name, r.State, r.Reason)
		}
	}
}

func TestFreshInstallReachesReadyAndAdvertisesEndpoints(t *testing.T) {
	h := newHarness(t)
	m := h.manager(nil)
	mustRound(t, m)
	requireAllReady(t, m)

	if c := m.Calls(); c.Installs != 3 || c.Upgrades+c.Rollbacks+c.Uninstalls != 0 {
		t.Fatalf("helm calls = %+v; want exactly 3 installs", c)
	}
	if p := m.Status().Profile; p != ProfileLarge {
		t.Errorf("profile = %q; want large (the kwok node has 32 CPU, 256 GiB)", p)
	}
	secrets := h.state.Get().Secrets
	for _, k := range []string{monitor.SecretGrafanaPassword, monitor.SecretPrometheusPassword, monitor.SecretLokiPassword} {
		if len(secrets[k]) != 43 {
			t.Errorf("state secret %s has %d characters; want 43 (32 random bytes, base64)", k, len(secrets[k]))
		}
	}

	var hb protocol.Heartbeat
	m.FillHeartbeat(context.Background(), &hb)
	ns := h.env.Namespace
	want := map[string]string{
		"prometheus_url": "http://kube-prometheus-stack-prometheus." + ns + ".svc.corp.internal:9090",
		"loki_url":       "http://loki." + ns + ".svc.corp.internal:3100",
		"grafana_url":    "http://kube-prometheus-stack-grafana." + ns + ".svc.corp.internal:3000",
	}
	got := map[string]string{"prometheus_url": hb.PrometheusURL, "loki_url": hb.LokiURL, "grafana_url": hb.GrafanaURL}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("heartbeat %s = %q; want %q", k, got[k], w)
		}
	}
	if hb.GrafanaUsername != "admin" || hb.GrafanaPassword != secrets[monitor.SecretGrafanaPassword] ||
		hb.PrometheusPassword != secrets[monitor.SecretPrometheusPassword] || hb.LokiPassword != secrets[monitor.SecretLokiPassword] {
		t.Errorf("heartbeat credentials do not match the persisted ones")
	}
	if hb.PrometheusSSL == nil || *hb.PrometheusSSL || hb.GrafanaSSL == nil || *hb.GrafanaSSL {
		t.Errorf("heartbeat *_ssl must be false for http URLs")
	}
	h.mu.Lock()
	if len(h.endpoints) != 1 || len(h.endpoints[0]) != 3 {
		t.Errorf("OnEndpoints calls = %v; want one call with 3 endpoints", h.endpoints)
	}
	h.mu.Unlock()

	// Grafana got the §12 root_url for this cluster, the persisted password,
	// and the sub-path flag (read back from what the chart rendered).
	sec, err := h.env.Client.CoreV1().Secrets(ns).Get(ctxFor(t, 10*time.Second), "kube-prometheus-stack-grafana-config", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	wantRoot := "root_url = https://api.example.test/api/v1/clusters/agent/" + testClusterID +
		"/proxy/api/v1/namespaces/" + ns + "/services/http:kube-prometheus-stack-grafana:3000/proxy/"
	ini := string(sec.Data["grafana.ini"])
	if !strings.Contains(ini, wantRoot) || !strings.Contains(ini, "serve_from_sub_path = true") {
		t.Errorf("grafana.ini = %q; want %q and serve_from_sub_path = true", ini, wantRoot)
	}
	if string(sec.Data["admin-password"]) != secrets[monitor.SecretGrafanaPassword] {
		t.Errorf("Grafana admin password in the release differs from the persisted one")
	}
	dep, err := h.env.Client.AppsV1().Deployments(ns).Get(ctxFor(t, 10*time.Second), "metrics-server", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctr := dep.Spec.Template.Spec.Containers[0]
	if !slices.Contains(ctr.Args, "--kubelet-insecure-tls") || ctr.Resources.Requests.Memory().String() != "200Mi" {
		t.Errorf("metrics-server args = %v, memory request = %s; want --kubelet-insecure-tls and the large profile's 200Mi",
			ctr.Args, ctr.Resources.Requests.Memory())
	}
}

func TestRestartMakesNoHelmCallsAndKeepsCredentials(t *testing.T) {
	h := newHarness(t)
	mustRound(t, h.manager(nil))
	before := h.state.Get().Secrets

	h.reopenState() // a new agent process: same state directory, new Manager
	m := h.manager(nil)
	mustRound(t, m)
	requireAllReady(t, m)
	if c := m.Calls(); c.Mutations() != 0 {
		t.Fatalf("helm calls after restart = %+v; want no install, upgrade, rollback or uninstall", c)
	}
	after := h.state.Get().Secrets
	for _, k := range []string{monitor.SecretGrafanaPassword, monitor.SecretPrometheusPassword, monitor.SecretLokiPassword} {
		if before[k] == "" || before[k] != after[k] {
			t.Errorf("secret %s changed across the restart", k)
		}
	}
	var hb protocol.Heartbeat
	m.FillHeartbeat(context.Background(), &hb)
	if hb.GrafanaPassword != before[monitor.SecretGrafanaPassword] || hb.GrafanaURL == "" {
		t.Errorf("heartbeat after restart: grafana_url %q, password unchanged = %v", hb.GrafanaURL, hb.GrafanaPassword == before[monitor.SecretGrafanaPassword])
	}
}

func TestChangingAValueUpgradesOnceThenNothing(t *testing.T) {
	h := newHarness(t)
	mustRound(t, h.manager(nil))

	m := h.manager(func(o *Options) {
		o.Components[1].Values = map[string]any{"prometheus": map[string]any{"prometheusSpec": map[string]any{"retention": "30d"}}}
	})
	mustRound(t, m)
	if c := m.Calls(); c.Upgrades != 1 || c.Mutations() != 1 {
		t.Fatalf("helm calls after a value change = %+v; want exactly one upgrade", c)
	}
	if r := releaseState(m, "prometheus"); r.Revision != 2 || r.State != apitype.ReleaseReady {
		t.Fatalf("prometheus release = %+v; want revision 2, ready", r)
	}
	dep, err := h.env.Client.AppsV1().Deployments(h.env.Namespace).Get(ctxFor(t, 10*time.Second), "kube-prometheus-stack-prometheus", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := dep.Spec.Template.Annotations["retention"]; got != "30d" {
		t.Errorf("rendered retention = %q; want the override 30d over the default 15d", got)
	}
	mustRound(t, m)
	if c := m.Calls(); c.Mutations() != 1 {
		t.Fatalf("helm calls after an unchanged round = %+v; want still one", c)
	}
}

func TestNeverReadyChartTimesOutIsRetriedAndRunKeepsGoing(t *testing.T) {
	h := newHarness(t)
	h.mon.RetryBase, h.mon.RetryMax = 50*time.Millisecond, 200*time.Millisecond
	m := h.manager(func(o *Options) {
		o.Components = []Component{
			{Name: "never_ready", Release: "never-ready", Namespace: h.env.Namespace, Chart: testChart("never-ready")},
			o.Components[0], // metrics-server, after it: a failing step must not stop the next
		}
		o.ReadyTimeout = 2 * time.Second
	})
	events, unsub := m.Subscribe()
	defer unsub()
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- m.Run(ctx) }()

	failures := 0
	deadline := time.After(60 * time.Second)
	for failures < 2 {
		select {
		case ev := <-events:
			if ev.Release.Component == "never_ready" && ev.Release.State == apitype.ReleaseFailed {
				failures++
				for _, want := range []string{"not ready after 2s", "Deployment " + h.env.Namespace + "/never-ready", "unschedulable"} {
					if !strings.Contains(ev.Release.Reason, want) {
						t.Errorf("failure reason %q does not contain %q", ev.Release.Reason, want)
					}
				}
			}
		case <-deadline:
			t.Fatalf("saw %d failures of never-ready within 60s; want 2 (a retry)", failures)
		}
	}
	if r := releaseState(m, "metrics_server"); r.State != apitype.ReleaseReady {
		t.Errorf("metrics-server = %s (%s); want ready despite the failing release before it", r.State, r.Reason)
	}
	if c := m.Calls(); c.Installs != 2 || c.Mutations() != 2 {
		t.Errorf("helm calls = %+v; want the two installs only (retries wait again, they do not reinstall)", c)
	}
	if st := m.Status(); !strings.Contains(st.LastError, "never-ready") || st.NextRetry.IsZero() {
		t.Errorf("status last_error %q, next_retry %v; want the failure and a scheduled retry", st.LastError, st.NextRetry)
	}
	cancel()
	select {
	case err := <-runDone:
		if err != nil {
			t.Fatalf("Run returned %v; want nil on cancel", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return within 10s of cancel")
	}
}

func TestStuckReleasesAreRecovered(t *testing.T) {
	for _, tc := range []struct {
		name      string
		upgrade   bool // make a second revision before marking it pending
		status    release.Status
		wantCalls HelmCalls // beyond the setup's
	}{
		{name: "pending-install is reinstalled", status: release.StatusPendingInstall, wantCalls: HelmCalls{Uninstalls: 1, Installs: 1}},
		{name: "pending-upgrade is rolled back then upgraded", upgrade: true, status: release.StatusPendingUpgrade, wantCalls: HelmCalls{Rollbacks: 1, Upgrades: 1}},
		{name: "failed install is reinstalled", status: release.StatusFailed, wantCalls: HelmCalls{Uninstalls: 1, Installs: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.opts.Components = h.opts.Components[:1] // metrics-server is enough
			m := h.manager(nil)
			mustRound(t, m)
			if tc.upgrade {
				m = h.manager(func(o *Options) { o.Components[0].Values = map[string]any{"args": []any{"--v=2"}} })
				mustRound(t, m)
			}
			// Simulate a crash mid-action: Helm's record says the action is still running.
			hc, err := m.e.helm.config(h.env.Namespace)
			if err != nil {
				t.Fatal(err)
			}
			rel, err := hc.Releases.Last("metrics-server")
			if err != nil {
				t.Fatal(err)
			}
			rel.Info.Status = tc.status
			if err := hc.Releases.Update(rel); err != nil {
				t.Fatal(err)
			}

			m2 := h.manager(func(o *Options) { o.Components = m.e.opts.Components })
			mustRound(t, m2)
			requireAllReady(t, m2)
			got := m2.Calls()
			got.Reads = 0
			if got != tc.wantCalls {
				t.Errorf("recovery helm calls = %+v; want %+v", got, tc.wantCalls)
			}
			last, err := hc.Releases.Last("metrics-server")
			if err != nil || last.Info.Status != release.StatusDeployed {
				t.Fatalf("release after recovery = %v, %v; want deployed", last, err)
			}
			if valuesHash(last.Config) != valuesHash(mustValues(t, m2.e, &m2.e.opts.Components[0])) {
				t.Errorf("recovered release does not carry the desired values")
			}
		})
	}
}

func mustValues(t *testing.T, m *Engine, c *Component) map[string]any {
	t.Helper()
	v, err := m.desiredValues(c, facts{Profile: ProfileLarge, ClusterID: testClusterID})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestUninstallRemovesReleasesAndInstallBringsThemBack(t *testing.T) {
	h := newHarness(t)
	h.mon.Resync = time.Hour
	m := h.manager(nil)
	mustRound(t, m)

	var seen []string
	if err := m.Uninstall(ctxFor(t, time.Minute), func(ev apitype.MonitoringEvent) {
		seen = append(seen, ev.Release.Name+"="+ev.Release.State)
	}); err != nil {
		t.Fatal(err)
	}
	if c := m.Calls(); c.Uninstalls != 3 {
		t.Fatalf("helm calls = %+v; want 3 uninstalls", c)
	}
	if !slices.Contains(seen, "loki=uninstalling") || !slices.Contains(seen, "metrics-server=uninstalled") {
		t.Errorf("uninstall progress = %v; want each release uninstalling then pending", seen)
	}
	for _, c := range m.e.opts.Components {
		if rel, err := m.e.helm.last(c.Namespace, c.Release); err != nil || rel != nil {
			t.Errorf("release %s still stored after uninstall: %v %v", c.Release, rel, err)
		}
	}
	var hb protocol.Heartbeat
	m.FillHeartbeat(context.Background(), &hb)
	if hb.GrafanaURL != "" || hb.PrometheusURL != "" || hb.LokiURL != "" {
		t.Errorf("heartbeat still advertises endpoints after uninstall: %+v", hb)
	}
	if !m.Status().Suspended {
		t.Errorf("status not suspended after uninstall")
	}

	// The loop must not reinstall on its own; Install does, with progress.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go m.Run(ctx)
	mustRoundCount := m.Calls().Installs
	var states []string
	if err := m.Install(ctxFor(t, 90*time.Second), func(ev apitype.MonitoringEvent) {
		states = append(states, ev.Release.Name+"="+ev.Release.State)
	}); err != nil {
		t.Fatalf("Install: %v", err)
	}
	if c := m.Calls(); c.Installs != mustRoundCount+3 {
		t.Errorf("helm installs = %d; want %d", c.Installs, mustRoundCount+3)
	}
	if !slices.Contains(states, "loki=ready") || !slices.Contains(states, "kube-prometheus-stack=installing") {
		t.Errorf("install progress = %v; want installing then ready per release", states)
	}
	requireAllReady(t, m)
}

func TestAGrafanaPasswordFromAnEarlierInstallerIsAdopted(t *testing.T) {
	h := newHarness(t)
	h.opts.Components = h.opts.Components[1:2] // prometheus (with Grafana)
	// The reference agent installed the release with its own random password.
	legacy := map[string]any{"grafana": map[string]any{"adminPassword": "legacy-password-from-the-reference"}}
	mustRound(t, h.manager(func(o *Options) { o.Components[0].Values = legacy }))
	if err := h.state.Update(func(s *state.State) error { delete(s.Secrets, monitor.SecretGrafanaPassword); return nil }); err != nil {
		t.Fatal(err)
	}

	m := h.manager(nil)
	mustRound(t, m)
	if got := h.state.Get().Secrets[monitor.SecretGrafanaPassword]; got != "legacy-password-from-the-reference" {
		t.Fatalf("persisted grafana password = %q; want the one already in the release", got)
	}
	if c := m.Calls(); c.Mutations() != 0 {
		t.Errorf("helm calls = %+v; want none (the adopted password renders the deployed values)", c)
	}
}
