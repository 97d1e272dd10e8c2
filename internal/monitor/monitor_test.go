package monitor

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
	"github.com/pipeops/pipeops-vm-agent/internal/state"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

var testComponents = []Component{
	{Name: "metrics_server", Release: "metrics-server", Namespace: "kube-system", Chart: "metrics-server"},
	{Name: "prometheus", Release: "kube-prometheus-stack", Namespace: "pipeops-monitoring", Chart: "kube-prometheus-stack"},
}

// fakeBackend reports what a test tells it to, in this process.
type fakeBackend struct {
	mu         sync.Mutex
	rounds     int
	uninstalls int
	result     Result
	err        error
	block      chan struct{} // when set, Round waits for it or ctx
}

func (f *fakeBackend) Round(ctx context.Context, s Sink) (Result, error) {
	f.mu.Lock()
	f.rounds++
	res, err, block := f.result, f.err, f.block
	f.mu.Unlock()
	s.SetRelease("metrics_server", apitype.ReleaseInstalling, "installing metrics-server 3.12.2", nil)
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return Result{}, ctx.Err()
		}
	}
	pw, ok := s.Secret(SecretGrafanaPassword)
	if !ok {
		var perr error
		if pw, perr = s.PutSecret(SecretGrafanaPassword, "generated-once", "generated"); perr != nil {
			return Result{}, perr
		}
	}
	for i := range res.Endpoints {
		res.Endpoints[i].Password = pw
	}
	s.SetRelease("metrics_server", apitype.ReleaseReady, "", &ReleaseInfo{Revision: 1, Chart: "metrics-server", Version: "3.12.2"})
	s.SetRelease("prometheus", apitype.ReleaseReady, "", &ReleaseInfo{Revision: 4, Chart: "kube-prometheus-stack", Version: "66.2.1"})
	return res, err
}

func (f *fakeBackend) Uninstall(_ context.Context, s Sink) error {
	f.mu.Lock()
	f.uninstalls++
	f.mu.Unlock()
	for _, c := range slices.Backward(testComponents) {
		s.SetRelease(c.Name, apitype.ReleaseUninstalled, "", &ReleaseInfo{})
	}
	return nil
}

func (f *fakeBackend) set(fn func(f *fakeBackend)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeBackend) counts() (rounds, uninstalls int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rounds, f.uninstalls
}

type recorder struct {
	mu    sync.Mutex
	calls [][]Endpoint
}

func (r *recorder) onEndpoints(e []Endpoint) {
	r.mu.Lock()
	r.calls = append(r.calls, e)
	r.mu.Unlock()
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.calls)
}

func newTestManager(t *testing.T, b Backend, mod func(o *Options)) (*Manager, *state.Store, *recorder) {
	t.Helper()
	st, err := state.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	o := Options{Enabled: true, Components: testComponents, Backend: b, State: st, OnEndpoints: rec.onEndpoints,
		RetryBase: 20 * time.Millisecond, RetryMax: 50 * time.Millisecond, Resync: time.Hour}
	if mod != nil {
		mod(&o)
	}
	m, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return m, st, rec
}

var promEndpoint = Endpoint{Name: "prometheus", Namespace: "pipeops-monitoring", Service: "kube-prometheus-stack-prometheus",
	Port: 9090, URL: "http://kube-prometheus-stack-prometheus.pipeops-monitoring.svc.cluster.local:9090", Username: "admin"}

func TestARoundLandsInStatusHeartbeatAndState(t *testing.T) {
	b := &fakeBackend{result: Result{Profile: "small", Complete: true, Endpoints: []Endpoint{promEndpoint}}}
	m, st, rec := newTestManager(t, b, nil)
	if s := m.Status(); len(s.Releases) != 2 || s.Releases[0].State != apitype.ReleasePending {
		t.Fatalf("status before the first round = %+v; want both releases pending", s.Releases)
	}
	if err := m.RunRound(context.Background()); err != nil {
		t.Fatal(err)
	}
	s := m.Status()
	if s.Profile != "small" || s.LastRound.IsZero() || s.LastError != "" {
		t.Errorf("status = %+v; want profile small, a last round and no error", s)
	}
	if r := s.Releases[1]; r.Name != "kube-prometheus-stack" || r.State != apitype.ReleaseReady || r.Revision != 4 || r.Version != "66.2.1" {
		t.Errorf("prometheus release = %+v; want ready, revision 4, version 66.2.1", r)
	}
	if len(s.Endpoints) != 1 || s.Endpoints[0].URL != promEndpoint.URL {
		t.Errorf("status endpoints = %+v; want the prometheus URL (and no credentials)", s.Endpoints)
	}
	if got := st.Get().Secrets[SecretGrafanaPassword]; got != "generated-once" {
		t.Errorf("stored grafana password = %q; want the backend's", got)
	}
	var hb protocol.Heartbeat
	m.FillHeartbeat(context.Background(), &hb)
	if hb.PrometheusURL != promEndpoint.URL || hb.PrometheusPassword != "generated-once" || hb.PrometheusSSL == nil || *hb.PrometheusSSL || hb.LokiURL != "" {
		t.Errorf("heartbeat = %+v; want prometheus only, with its credential and ssl false", hb)
	}

	// The same endpoints again: OnEndpoints is not called twice. A round that
	// stopped early leaves them advertised.
	if err := m.RunRound(context.Background()); err != nil {
		t.Fatal(err)
	}
	b.set(func(f *fakeBackend) {
		f.result, f.err = Result{}, errors.New("waiting for the Kubernetes API: refused")
	})
	if err := m.RunRound(context.Background()); err == nil {
		t.Fatal("the failed round returned no error")
	}
	if rec.count() != 1 || len(m.Endpoints()) != 1 {
		t.Errorf("OnEndpoints calls = %d, endpoints = %v; want one call and prometheus still advertised", rec.count(), m.Endpoints())
	}
	if s := m.Status(); s.LastError != "waiting for the Kubernetes API: refused" {
		t.Errorf("last_error = %q", s.LastError)
	}
}

func TestPutSecretNeverReplacesAStoredCredential(t *testing.T) {
	dir := t.TempDir()
	st, err := state.Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	m, _, _ := newTestManager(t, &fakeBackend{}, func(o *Options) { o.State = st })
	s := m.Sink()
	if v, err := s.PutSecret(SecretLokiPassword, "first", "generated"); err != nil || v != "first" {
		t.Fatalf("PutSecret = %q, %v", v, err)
	}
	if v, err := s.PutSecret(SecretLokiPassword, "second", "adopted from the existing release"); err != nil || v != "first" {
		t.Fatalf("second PutSecret = %q, %v; want the stored first", v, err)
	}
	if _, err := s.PutSecret(SecretLokiPassword, "", "generated"); err == nil {
		t.Error("an empty credential was accepted")
	}
	reopened, err := state.Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := reopened.Get().Secrets[SecretLokiPassword]; got != "first" {
		t.Errorf("persisted = %q; want first", got)
	}
}

func TestUninstallSuspendsTheLoopUntilInstall(t *testing.T) {
	b := &fakeBackend{result: Result{Complete: true, Endpoints: []Endpoint{promEndpoint}}}
	m, _, rec := newTestManager(t, b, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runDone := make(chan error, 1)
	go func() { runDone <- m.Run(ctx) }()
	testbin.Eventually(t, 5*time.Second, "the first round", func() bool { return len(m.Endpoints()) == 1 })

	var seen []string
	if err := m.Uninstall(context.Background(), func(ev apitype.MonitoringEvent) {
		seen = append(seen, ev.Release.Component+"="+ev.Release.State)
	}); err != nil {
		t.Fatal(err)
	}
	if want := []string{"prometheus=uninstalled", "metrics_server=uninstalled"}; !slices.Equal(seen, want) {
		t.Errorf("uninstall events = %v; want %v", seen, want)
	}
	if s := m.Status(); !s.Suspended || len(s.Endpoints) != 0 || s.Releases[1].Revision != 0 {
		t.Errorf("status after uninstall = %+v; want suspended, no endpoints, revision cleared", s)
	}
	if rec.count() != 2 {
		t.Errorf("OnEndpoints calls = %d; want 2 (ready, then none)", rec.count())
	}
	rounds, _ := b.counts()
	// A suspended manager does not reinstall on its own. Run takes a kick
	// only between rounds, so once a second kick is taken the round the
	// first one started has finished.
	for _, which := range []string{"first", "second"} {
		m.Kick()
		testbin.Eventually(t, 5*time.Second, "the "+which+" kick taken", func() bool { return len(m.kick) == 0 })
	}
	if r, _ := b.counts(); r != rounds {
		t.Errorf("rounds while suspended: %d → %d; want none", rounds, r)
	}

	var states []string
	if err := m.Install(context.Background(), func(ev apitype.MonitoringEvent) {
		states = append(states, ev.Release.Component+"="+ev.Release.State)
	}); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(states, "metrics_server=installing") || !slices.Contains(states, "prometheus=ready") {
		t.Errorf("install events = %v; want installing then ready", states)
	}
	if s := m.Status(); s.Suspended || len(s.Endpoints) != 1 {
		t.Errorf("status after install = %+v; want not suspended, prometheus advertised", s)
	}
	cancel()
	if err := <-runDone; err != nil {
		t.Errorf("Run = %v; want nil on cancel", err)
	}
}

func TestUninstallCancelsARoundInProgress(t *testing.T) {
	b := &fakeBackend{block: make(chan struct{})}
	m, _, _ := newTestManager(t, b, nil)
	roundErr := make(chan error, 1)
	go func() { roundErr <- m.RunRound(context.Background()) }()
	testbin.Eventually(t, 5*time.Second, "the round to start", func() bool { r, _ := b.counts(); return r == 1 })
	if err := m.Uninstall(context.Background(), func(apitype.MonitoringEvent) {}); err != nil {
		t.Fatal(err)
	}
	if err := <-roundErr; !errors.Is(err, context.Canceled) {
		t.Errorf("the blocked round ended with %v; want context.Canceled", err)
	}
}

func TestInstallIsRefusedWhenDisabledAndRunJustWaits(t *testing.T) {
	b := &fakeBackend{}
	m, _, _ := newTestManager(t, b, func(o *Options) { o.Enabled = false })
	if err := m.Install(context.Background(), func(apitype.MonitoringEvent) {}); !errors.Is(err, ErrDisabled) {
		t.Fatalf("Install = %v; want ErrDisabled", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := m.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if r, _ := b.counts(); r != 0 || len(m.Status().Releases) != 0 {
		t.Errorf("disabled: %d rounds, releases %v; want none", r, m.Status().Releases)
	}
}

func TestAFailedRoundIsRetriedWithBackoff(t *testing.T) {
	b := &fakeBackend{err: fmt.Errorf("kube-system/metrics-server: %w", ErrNoClusterID)}
	m, _, _ := newTestManager(t, b, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = m.Run(ctx) }()
	testbin.Eventually(t, 5*time.Second, "three rounds (retries after 20 ms, 40 ms)", func() bool { r, _ := b.counts(); return r >= 3 })
	if s := m.Status(); s.NextRetry.IsZero() || s.LastError == "" {
		t.Errorf("status = %+v; want a last error and a next retry", s)
	}
}
