package daemon

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pipeops/pipeops-vm-agent/internal/config"
	"github.com/pipeops/pipeops-vm-agent/internal/devplane"
	"github.com/pipeops/pipeops-vm-agent/internal/kube"
	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
	"github.com/pipeops/pipeops-vm-agent/internal/logging"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

// TestFiftyReconnectsUnderLoadLeaveNoGoroutineBehind runs the whole agent
// in-process against the reference control plane and the real test
// cluster, drops its connection 50 times while proxied requests and a
// watch run through it, stops it, and checks with goleak that every
// goroutine it started has ended: the connection's reader, writer and
// pinger, hooks, per-message senders, the proxy's per-request goroutines.
func TestFiftyReconnectsUnderLoadLeaveNoGoroutineBehind(t *testing.T) {
	env := kubetest.Cluster(t)
	// Goroutines of the test's own servers and clients are not the agent's.
	opts := []goleak.Option{goleak.IgnoreCurrent(),
		// Idle keep-alive connections belong to their http.Transport (client-go
		// caches its transports process-wide); they close on their idle timeout.
		goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreAnyFunction("net/http.(*http2ClientConn).readLoop"),
	}
	plane := devplane.New(devplane.Config{Tokens: []string{"leak-token"}})
	srv := httptest.NewServer(plane.Handler())
	defer srv.Close()
	d := newInProcessAgent(t, env, srv.URL, "leak-token", nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	heartbeats := func() int {
		cs := plane.Clusters()
		if len(cs) != 1 || !cs[0].Connected || cs[0].Mode != devplane.KindGateway {
			return -1
		}
		return cs[0].Heartbeats
	}
	testbin.Eventually(t, 60*time.Second, "heartbeating on the gateway", func() bool { return heartbeats() > 0 })
	id := plane.Clusters()[0].ID

	// Load: 4 clients of short proxied calls and one watch, each retried
	// as connections drop under it.
	loadCtx, stopLoad := context.WithCancel(context.Background())
	var load sync.WaitGroup
	client := &http.Client{Timeout: 10 * time.Second}
	front := srv.URL + devplane.FrontDoorPrefix + id + "/k8s"
	for i := 0; i < 5; i++ {
		path := "/version"
		if i == 0 {
			path = fmt.Sprintf("/api/v1/namespaces/%s/configmaps?watch=true", env.Namespace)
		}
		load.Add(1)
		go func() {
			defer load.Done()
			for loadCtx.Err() == nil {
				req, _ := http.NewRequestWithContext(loadCtx, http.MethodGet, front+path, nil)
				if resp, err := client.Do(req); err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
		}()
	}
	for i := 0; i < 50; i++ {
		before := heartbeats()
		plane.DropAll()
		testbin.Eventually(t, 10*time.Second, fmt.Sprintf("reconnect %d", i+1), func() bool {
			hb := heartbeats()
			return hb > before && hb >= 0
		})
	}
	// Stop while the load still runs, so requests and the watch are in
	// flight: Run must drain and join them before it returns.
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v; want nil", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the daemon did not stop within 30 s")
	}
	left := agentGoroutines() // at once: owned goroutines are joined, not merely ending
	stopLoad()
	load.Wait()
	client.CloseIdleConnections()
	srv.Close()
	for _, g := range left {
		t.Errorf("a goroutine of the agent outlived daemon.Run:\n%s", g)
	}
	goleak.VerifyNone(t, opts...)
}

// agentGoroutines returns the stacks of running goroutines with a frame in
// the agent's own packages (not the devplane's, not the test's).
func agentGoroutines() []string {
	buf := make([]byte, 8<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "_test.go") || strings.Contains(g, "internal/devplane.") {
			continue
		}
		if strings.Contains(g, "pipeops-vm-agent/internal/") || strings.Contains(g, "pipeops-vm-agent/daemon.") {
			out = append(out, g)
		}
	}
	return out
}

// newInProcessAgent builds the whole agent against apiURL and env's
// cluster, in its own namespace (its ClusterRole and binding are deleted
// when the test ends), with fast heartbeats and reconnects.
func newInProcessAgent(t *testing.T, env *kubetest.Env, apiURL, token string, edit func(*config.Config)) *Daemon {
	t.Helper()
	t.Cleanup(func() {
		ctx := context.Background()
		name := kube.ClusterRoleName + "-" + env.Namespace
		env.Client.RbacV1().ClusterRoleBindings().Delete(ctx, name, metav1.DeleteOptions{})
		env.Client.RbacV1().ClusterRoles().Delete(ctx, name, metav1.DeleteOptions{})
	})
	dir := testbin.ShortTempDir(t)
	cfg := config.Default()
	cfg.Agent.Port = testbin.FreePort(t)
	cfg.Agent.StateDir = filepath.Join(dir, "state")
	cfg.Agent.Socket = filepath.Join(dir, "a.sock")
	cfg.Agent.HeartbeatInterval = config.D(200 * time.Millisecond)
	cfg.PipeOps.APIURL = apiURL
	cfg.PipeOps.Token = config.Secret(token)
	cfg.PipeOps.Reconnect.Interval = config.D(20 * time.Millisecond)
	cfg.PipeOps.Reconnect.MaxInterval = config.D(100 * time.Millisecond)
	cfg.Kubernetes.Kubeconfig = env.Kubeconfig
	cfg.Kubernetes.Namespace = env.Namespace
	cfg.Monitoring.CacheDir = filepath.Join(dir, "cache")
	if edit != nil {
		edit(cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	d, err := New(cfg, logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	return d
}
