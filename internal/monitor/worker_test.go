package monitor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/state"
)

// The test binary is its own worker: with MONITOR_TEST_WORKER set it serves
// one request the way "pipeops-agent-helm worker" does, with a backend
// that behaves as the variable says.
func TestMain(m *testing.M) {
	if mode := os.Getenv("MONITOR_TEST_WORKER"); mode != "" {
		os.Exit(fakeWorker(mode))
	}
	os.Exit(m.Run())
}

func fakeWorker(mode string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	switch mode {
	case "crash":
		fmt.Fprintln(os.Stderr, "panic: runtime error: invalid memory address")
		return 2
	case "garbage":
		fmt.Println("this is not JSON")
		return 0
	}
	err := ServeWorker(ctx, os.Stdin, os.Stdout, func(req WorkerRequest, kube *rest.Config) (Backend, error) {
		return &echoBackend{mode: mode, req: req, kube: kube, log: log}, nil
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// echoBackend reports what the worker received, so the daemon side can
// check that the request crossed the process boundary intact.
type echoBackend struct {
	mode string
	req  WorkerRequest
	kube *rest.Config
	log  *slog.Logger
}

func (b *echoBackend) Round(ctx context.Context, s Sink) (Result, error) {
	b.log.Warn("rendering values", "component", "prometheus", "profile", b.req.Settings.Profile)
	fmt.Fprintln(os.Stderr, "W1126 client-go warning: policy/v1beta1 PodDisruptionBudget is deprecated")
	switch b.mode {
	case "hang":
		s.SetRelease("prometheus", apitype.ReleaseInstalling, "waiting for workloads to become ready", nil)
		<-ctx.Done()
		return Result{}, ctx.Err()
	case "no-cluster-id":
		return Result{}, fmt.Errorf("pipeops-monitoring/kube-prometheus-stack: %w", ErrNoClusterID)
	}
	pw, _ := s.Secret(SecretPrometheusPassword)
	gpw, err := s.PutSecret(SecretGrafanaPassword, "made-in-the-worker", "generated")
	if err != nil {
		return Result{}, err
	}
	s.SetRelease("prometheus", apitype.ReleaseReady, "", &ReleaseInfo{Revision: 2, Chart: "kube-prometheus-stack", Version: "66.2.1"})
	e := promEndpoint
	// The request's fields come back through the endpoint, to be checked.
	e.Password = pw + "|" + gpw
	e.Service = fmt.Sprintf("%s|%s|%s|%s|%v|token=%q", b.kube.Host, b.kube.BearerToken, string(b.kube.CAData), s.ClusterID(),
		b.req.Settings.Timeout, os.Getenv("PIPEOPS_TOKEN"))
	return Result{Profile: b.req.Settings.Profile, Complete: true, Endpoints: []Endpoint{e}}, nil
}

func (b *echoBackend) Uninstall(context.Context, Sink) error {
	return errors.New("uninstall refused by the test")
}

// execBackend runs this test binary as the worker in mode.
func execBackend(t *testing.T, mode string, logs *bytes.Buffer) *Exec {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("MONITOR_TEST_WORKER", mode)
	return &Exec{Path: exe, Args: []string{"-test.run=^$"},
		Settings: Settings{Components: testComponents, Profile: "medium", CacheDir: t.TempDir(), Timeout: 90 * time.Second},
		Kube: func(context.Context) (*rest.Config, error) {
			return &rest.Config{Host: "https://10.0.0.1:6443", BearerToken: "admin-token",
				TLSClientConfig: rest.TLSClientConfig{CAData: []byte("PEM")}}, nil
		},
		Log: slog.New(slog.NewTextHandler(logs, nil)),
	}
}

func TestAWorkerRoundCrossesTheProcessBoundary(t *testing.T) {
	t.Setenv("PIPEOPS_TOKEN", "control-plane-token")
	var logs bytes.Buffer
	m, st, _ := newTestManager(t, execBackend(t, "ok", &logs), nil)
	if _, err := m.Sink().PutSecret(SecretPrometheusPassword, "from-the-daemon", "generated"); err != nil {
		t.Fatal(err)
	}
	if err := st.Update(func(s *state.State) error { s.ClusterID = "c-42"; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := m.RunRound(context.Background()); err != nil {
		t.Fatalf("round: %v\nlogs:\n%s", err, logs.String())
	}
	eps := m.Endpoints()
	if len(eps) != 1 {
		t.Fatalf("endpoints = %+v; want the worker's one", eps)
	}
	if want := `https://10.0.0.1:6443|admin-token|PEM|c-42|1m30s|token=""`; eps[0].Service != want {
		t.Errorf("the worker saw %q; want %q (host, token, CA, cluster id, timeout, and no control-plane token)", eps[0].Service, want)
	}
	if eps[0].Password != "from-the-daemon|made-in-the-worker" {
		t.Errorf("credentials seen by the worker = %q", eps[0].Password)
	}
	if got := st.Get().Secrets[SecretGrafanaPassword]; got != "made-in-the-worker" {
		t.Errorf("the worker's generated credential was not stored: %q", got)
	}
	if s := m.Status(); s.Profile != "medium" || s.Releases[1].State != apitype.ReleaseReady || s.Releases[1].Revision != 2 {
		t.Errorf("status = %+v; want profile medium and prometheus ready at revision 2", s)
	}
	if l := logs.String(); !strings.Contains(l, "level=WARN") || !strings.Contains(l, `msg="rendering values"`) || !strings.Contains(l, "profile=medium") {
		t.Errorf("the worker's log line was not logged again with its level and attributes:\n%s", l)
	}
	if l := logs.String(); !strings.Contains(l, `msg="monitoring worker output" line="W1126 client-go warning`) {
		t.Errorf("the worker's plain stderr line was dropped:\n%s", l)
	}
	if err := m.Uninstall(context.Background(), func(apitype.MonitoringEvent) {}); err == nil || err.Error() != "uninstall refused by the test" {
		t.Errorf("Uninstall = %v; want the worker's error", err)
	}
}

func TestWorkerFailuresAreErrorsThatSayWhat(t *testing.T) {
	for _, tc := range []struct{ mode, want string }{
		{"crash", "ended without a result: exit status 2; its last output: panic: runtime error: invalid memory address"},
		{"garbage", "bad line from the worker"},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			m, _, _ := newTestManager(t, execBackend(t, tc.mode, &bytes.Buffer{}), nil)
			if err := m.RunRound(context.Background()); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("round = %v; want an error containing %q", err, tc.want)
			}
		})
	}
	m, _, _ := newTestManager(t, &Exec{Path: "/nonexistent/pipeops-agent-helm", Settings: Settings{Components: testComponents},
		Kube: func(context.Context) (*rest.Config, error) { return &rest.Config{Host: "https://x"}, nil }}, nil)
	if err := m.RunRound(context.Background()); err == nil || !strings.Contains(err.Error(), "reinstall the package") {
		t.Errorf("missing worker: %v; want a hint to reinstall", err)
	}
}

func TestWorkerErrorsKeepErrNoClusterID(t *testing.T) {
	b := execBackend(t, "no-cluster-id", &bytes.Buffer{})
	m, _, _ := newTestManager(t, b, nil)
	_, err := b.Round(context.Background(), m.Sink())
	if !errors.Is(err, ErrNoClusterID) || !strings.Contains(err.Error(), "kube-prometheus-stack") {
		t.Errorf("round = %v; want ErrNoClusterID with its context", err)
	}
}

func TestCancellingARoundStopsTheWorker(t *testing.T) {
	m, _, _ := newTestManager(t, execBackend(t, "hang", &bytes.Buffer{}), nil)
	events, unsub := m.Subscribe()
	defer unsub()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.RunRound(ctx) }()
	select {
	case ev := <-events:
		if ev.Release.State != apitype.ReleaseInstalling {
			t.Fatalf("first event = %+v; want installing", ev.Release)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no event from the worker within 20s")
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("round = %v; want context.Canceled", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the round did not end within 20s of cancel (the worker ignored SIGTERM?)")
	}
}

func TestKubeAccessRefusesCredentialPlugins(t *testing.T) {
	_, err := KubeAccessFrom(&rest.Config{Host: "https://x", ExecProvider: &clientcmdapi.ExecConfig{Command: "aws"}})
	if err == nil || !strings.Contains(err.Error(), "kubernetes.kubeconfig") {
		t.Errorf("exec provider: %v; want an error naming kubernetes.kubeconfig", err)
	}
	in := &rest.Config{Host: "https://h", BearerTokenFile: "/t", TLSClientConfig: rest.TLSClientConfig{CAFile: "/ca", CertData: []byte("c"), KeyData: []byte("k"), ServerName: "s"}}
	k, err := KubeAccessFrom(in)
	if err != nil {
		t.Fatal(err)
	}
	out := k.Config()
	if out.Host != in.Host || out.BearerTokenFile != "/t" || out.CAFile != "/ca" || string(out.KeyData) != "k" || out.ServerName != "s" {
		t.Errorf("round trip lost fields: %+v", out)
	}
}
