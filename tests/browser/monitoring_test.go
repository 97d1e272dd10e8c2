package browser

import (
	"context"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/dashboard"
)

// TestTheMonitoringCardShowsEveryComponentWithItsStateInARealBrowser serves
// the real dashboard page with a status in which each monitoring component
// is in another state (ready, skipped next to a foreign install, off in
// config, failed) and reads the card in headless Chromium: one row per
// component with its state and reason, and the stack's overall state.
func TestTheMonitoringCardShowsEveryComponentWithItsStateInARealBrowser(t *testing.T) {
	browser := Start(t)
	status := apitype.StatusResponse{AgentID: "agent-monitoring", ClusterName: "browser-e2e", StartedAt: time.Now(),
		Monitoring: apitype.MonitoringStatus{Enabled: true, Releases: []apitype.Release{
			{Component: "traefik", Name: "traefik", Namespace: "pipeops-system", Version: "25.0.0", State: "ready"},
			{Component: "cert_manager", Name: "cert-manager", Namespace: "cert-manager", State: "skipped",
				Reason: "cert-manager already runs (Deployment ops/cert-manager)"},
			{Component: "coredns", Name: "coredns", Namespace: "kube-system", State: "disabled", Reason: "off in config"},
			{Component: "prometheus", Name: "kube-prometheus-stack", Namespace: "pipeops-monitoring", State: "failed",
				Reason: "timed out waiting for the condition"},
		}}}
	d := dashboard.New(dashboard.Options{
		Snapshot:  func(context.Context) apitype.StatusResponse { return status },
		EnableSSE: true,
	})
	ctx, cancel := context.WithCancel(context.Background())
	go func() { _ = d.Run(ctx) }()
	mux := http.NewServeMux()
	d.Register(func(pattern string, h http.Handler) { mux.Handle(pattern, h) })
	srv := httptest.NewServer(mux)
	t.Cleanup(func() {
		// The page's event stream stays open: end it before Close waits on it.
		cancel()
		srv.CloseClientConnections()
		srv.Close()
	})

	browser.Open(t, srv.URL+"/")
	browser.WaitText(t, "monitoring-state", 30*time.Second, is("failed"))
	rows := browser.Eval(t, `return Array.from(document.querySelectorAll('#monitoring-releases tr')).map((tr) => tr.dataset.component + '|' + tr.dataset.state + '|' + tr.textContent);`)
	got, _ := rows.([]any)
	if len(got) != len(status.Monitoring.Releases) {
		t.Fatalf("monitoring rows = %v; want one per component (%d)", rows, len(status.Monitoring.Releases))
	}
	for i, r := range status.Monitoring.Releases {
		row, _ := got[i].(string)
		for _, want := range []string{r.Component + "|" + r.State + "|", r.Namespace + "/" + r.Name, r.State, r.Reason} {
			if !strings.Contains(row, want) {
				t.Errorf("row %d = %q; want it to contain %q", i, row, want)
			}
		}
	}
	browser.Screenshot(t, filepath.Join(artifacts(t), "dashboard-monitoring.png"))
}
