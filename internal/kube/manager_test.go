package kube_test

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pipeops/pipeops-vm-agent/internal/config"
	"github.com/pipeops/pipeops-vm-agent/internal/health"
	"github.com/pipeops/pipeops-vm-agent/internal/kube"
	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

func TestMain(m *testing.M) { kubetest.Main(m) }

// fakeClock is an injectable clock that tests move forward by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// testNames keeps a test's cluster-scoped objects apart from other tests'
// on the shared cluster, and deletes them afterwards.
func testNames(t *testing.T, env *kubetest.Env, monitoring bool) kube.Names {
	n := kube.Names{Namespace: env.Namespace, ClusterRole: "pipeops-agent-" + env.Namespace}
	if monitoring {
		n.MonitoringNamespace = env.Namespace + "-mon"
	}
	t.Cleanup(func() {
		ctx := context.Background()
		// Also the workload RoleBindings a Manager made in every namespace.
		_, _ = kube.RemoveIdentity(ctx, env.Client, n)
		if n.MonitoringNamespace != "" {
			env.Client.CoreV1().Namespaces().Delete(ctx, n.MonitoringNamespace, metav1.DeleteOptions{})
		}
	})
	return n
}

// startManager runs a Manager against env's cluster (found through
// PIPEOPS_KUBECONFIG; no well-known paths) until the test ends.
func startManager(t *testing.T, env *kubetest.Env, kcfg config.Kubernetes, opts ...kube.Option) *kube.Manager {
	t.Helper()
	getenv := func(k string) string {
		if k == "PIPEOPS_KUBECONFIG" {
			return env.Kubeconfig
		}
		return ""
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(testWriter{t}, nil))
	}
	opts = append([]kube.Option{kube.WithWellKnownKubeconfigs(nil), kube.WithIntervals(200*time.Millisecond, 200*time.Millisecond, 0)}, opts...)
	m := kube.New(kcfg, getenv, log, nil, opts...)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run returned %v; want nil after cancel", err)
		}
	})
	return m
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

// eventually polls cond every 100 ms until it holds or the deadline passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	testbin.Eventually(t, d, what, cond)
}

func condition(tr *health.Tracker, name string) health.Condition {
	for _, c := range tr.Snapshot() {
		if c.Name == name {
			return c
		}
	}
	return health.Condition{}
}

func credentials(t *testing.T, m *kube.Manager) (string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	tok, ca, err := m.Credentials(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return tok, ca
}
