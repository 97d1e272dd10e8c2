package daemon

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/config"
	"github.com/pipeops/pipeops-vm-agent/internal/localclient"
	"github.com/pipeops/pipeops-vm-agent/internal/logging"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

// runDaemon starts the real daemon (no control plane, no cluster) and
// returns a client on its local API socket.
func runDaemon(t *testing.T, edit func(c *config.Config)) *localclient.Client {
	t.Helper()
	dir := testbin.ShortTempDir(t)
	cfg := config.Default()
	cfg.Agent.Port = testbin.FreePort(t)
	cfg.Agent.StateDir = filepath.Join(dir, "state")
	cfg.Agent.Socket = filepath.Join(dir, "a.sock")
	cfg.PipeOps.APIURL = fmt.Sprintf("http://127.0.0.1:%d", testbin.FreePort(t)) // nothing listens
	cfg.PipeOps.Token = "tok"
	cfg.Kubernetes.Kubeconfig = filepath.Join(dir, "absent-kubeconfig")
	cfg.Monitoring.CacheDir = filepath.Join(dir, "cache")
	edit(cfg)
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	d, err := New(cfg, logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			t.Error("daemon did not stop")
		}
	})
	c := &localclient.Client{Socket: cfg.Agent.Socket}
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := c.Status(context.Background()); err == nil {
			return c
		} else if time.Now().After(deadline) {
			t.Fatalf("local API did not come up: %v", err)
		}
	}
}

func TestMonitoringInstallIsRefusedWithAHintWhenDisabled(t *testing.T) {
	c := runDaemon(t, func(c *config.Config) { c.Monitoring.Enabled = false })
	st, err := c.Monitoring(context.Background())
	if err != nil || st.Enabled || len(st.Releases) != 0 {
		t.Fatalf("GET /v1/monitoring = %+v, %v; want disabled with no releases", st, err)
	}
	err = c.MonitoringAction(context.Background(), "install", func(apitype.MonitoringEvent) error { return nil })
	var ae *apitype.Error
	if !errors.As(err, &ae) || ae.Code != apitype.CodeBadRequest || !strings.Contains(ae.Hint, "monitoring") {
		t.Fatalf("POST /v1/monitoring/install = %v; want bad_request with a hint to enable monitoring", err)
	}
}

func TestMonitoringStatusListsTheConfiguredReleasesBeforeKubernetesAnswers(t *testing.T) {
	c := runDaemon(t, func(c *config.Config) {
		c.Monitoring.Enabled = true
		c.Monitoring.Components.VPA.Enabled = false
		c.Monitoring.Components.Grafana.Enabled = false
	})
	st, err := c.Monitoring(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range st.Releases {
		names = append(names, r.Namespace+"/"+r.Name+"="+r.State)
	}
	// Every component, in install order; those switched off last, saying so.
	want := "kube-system/metrics-server=pending kube-system/coredns=pending pipeops-system/traefik=pending " +
		"cert-manager/cert-manager=pending pipeops-monitoring/kube-prometheus-stack=pending pipeops-monitoring/loki=pending " +
		"pipeops-system/vpa=disabled pipeops-monitoring/grafana=disabled"
	if got := strings.Join(names, " "); !st.Enabled || got != want {
		t.Fatalf("releases = %s; want %s", got, want)
	}
	full, err := c.Status(context.Background())
	if err != nil || len(full.Monitoring.Releases) != 8 {
		t.Fatalf("GET /v1/status monitoring = %+v, %v; want the same 8 components", full.Monitoring, err)
	}
}
