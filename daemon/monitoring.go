package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"sync"
	"time"

	"k8s.io/client-go/rest"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/localapi"
	"github.com/pipeops/pipeops-vm-agent/internal/logging"
	"github.com/pipeops/pipeops-vm-agent/internal/monitor"
	"github.com/pipeops/pipeops-vm-agent/internal/paths"
)

// chartsPart holds what the charts wiring builds. Owned by wire_charts.go.
type chartsPart struct {
	charts *monitor.Manager
}

// wireCharts builds the monitoring stack's manager (protocol.md §12): its
// loop, its status section, its heartbeat fields, its tunnel forwards and
// the local API routes behind `pipeopsctl monitoring`. The Helm work runs in
// a pipeops-agent-helm process per round, so the daemon does not link Helm.
func (d *Daemon) wireCharts() error {
	mc := d.cfg.Monitoring
	cacheDir := mc.CacheDir
	if cacheDir == "" {
		cacheDir = filepath.Join(paths.CacheDir(), "helm")
	}
	var comps, disabled []monitor.Component
	for _, c := range mc.Components.Each() { // install order of §12
		ns := c.Namespace
		if ns == "" {
			ns = mc.Namespace
		}
		comp := monitor.Component{Name: c.Name, Release: c.Release, Namespace: ns,
			Repo: c.Repo, Chart: c.Chart, Version: c.Version, Values: c.Values}
		switch c.Name {
		case "coredns": // not a release: the Corefile in kube-system/coredns
			comp.Release, comp.Namespace = "coredns", "kube-system"
		case "grafana": // part of the prometheus release: listed only when off
			if c.Enabled {
				continue
			}
			comp.Release = "grafana"
		}
		if !c.Enabled {
			disabled = append(disabled, comp)
			continue
		}
		comps = append(comps, comp)
	}
	log := d.log.With(logging.KeyComponent, "charts")
	backend := &monitor.Exec{
		Path: filepath.Base(paths.HelmBinary), // beside pipeops-agent in every install
		Args: []string{"worker"},
		Settings: monitor.Settings{
			Components:     comps,
			Grafana:        mc.Components.Grafana.Enabled && mc.Components.Prometheus.Enabled,
			GrafanaSubPath: d.cfg.Agent.GrafanaSubPath,
			APIURL:         d.cfg.PipeOps.APIURL,
			ClusterDomain:  d.cfg.Kubernetes.ClusterDomain,
			ACMEEmail:      mc.ACMEEmail,
			Profile:        mc.Profile,
			ChartsDir:      mc.ChartsDir,
			CacheDir:       cacheDir,
			Timeout:        mc.Timeout.Std(),
			ReadyTimeout:   mc.ReadyTimeout.Std(),
		},
		Kube:     d.adminConfig,
		LogLevel: d.cfg.Logging.Level,
		Log:      d.log,
	}
	m, err := monitor.New(monitor.Options{
		Enabled:     mc.Enabled,
		Components:  comps,
		Disabled:    disabled,
		Backend:     backend,
		State:       d.state,
		Health:      d.health,
		Log:         log,
		OnEndpoints: d.monitoringForwards,
	})
	if err != nil {
		return fmt.Errorf("monitoring: %w", err)
	}
	d.chartsPart.charts = m
	d.addSubsystem("monitoring", m.Run)
	d.fillers = append(d.fillers, func(_ context.Context, st *apitype.StatusResponse) { st.Monitoring = m.Status() })
	if d.cpPart.cp != nil {
		d.cpPart.cp.AddHeartbeatContributor(m.FillHeartbeat)
	}
	d.api.Handle("GET /v1/monitoring", localapi.Handle(d.log, func(*http.Request) (apitype.MonitoringStatus, error) {
		return m.Status(), nil
	}))
	d.api.Handle("POST /v1/monitoring/install", monitoringStream(d, m.Install))
	d.api.Handle("POST /v1/monitoring/uninstall", monitoringStream(d, m.Uninstall))
	return nil
}

// adminConfig waits (bounded) for kubeconfig discovery and bootstrap: Helm
// installs with the admin identity, never the ServiceAccount's.
func (d *Daemon) adminConfig(ctx context.Context) (*rest.Config, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if _, err := d.kubePart.mgr.WaitClientset(ctx); err != nil {
		return nil, err
	}
	if c := d.kubePart.mgr.AdminConfig(); c != nil {
		return c, nil
	}
	return nil, errors.New("no admin kubeconfig discovered yet")
}

// monitoringForwards keeps a tunnel forward for each ready endpoint, so the
// control plane can open streams to Grafana, Prometheus and Loki, and
// removes those whose component is gone (uninstalled, or no longer ready).
func (d *Daemon) monitoringForwards(eps []monitor.Endpoint) {
	ready := map[string]bool{}
	for _, e := range eps {
		ready[e.Name] = true
		d.log.Info("monitoring endpoint ready", "component", e.Name, logging.KeyURL, e.URL)
		// nil-safe: a disabled tunnel ignores it. A configured forward of the same name wins.
		d.tunnelPart.tunnel.SetServiceForward(e.Name, e.Namespace, e.Service, e.Port)
	}
	for _, name := range []string{"prometheus", "loki", "grafana"} {
		if !ready[name] {
			d.tunnelPart.tunnel.RemoveServiceForward(name)
		}
	}
}

// monitoringStream serves an action as NDJSON (application/x-ndjson): one
// event per line, flushed at once, so `pipeopsctl monitoring install` can
// show progress; the last line has done: true and the final status.
func monitoringStream(d *Daemon, action func(context.Context, func(apitype.MonitoringEvent)) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !d.cfg.Monitoring.Enabled && r.URL.Path == "/v1/monitoring/install" {
			localapi.Handle(d.log, func(*http.Request) (struct{}, error) { return struct{}{}, monitor.ErrDisabled }).ServeHTTP(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.WriteHeader(http.StatusOK)
		fl, _ := w.(http.Flusher)
		enc := json.NewEncoder(w)
		var mu sync.Mutex
		emit := func(ev apitype.MonitoringEvent) {
			mu.Lock()
			defer mu.Unlock()
			_ = enc.Encode(ev) // the client went away; the action still completes
			if fl != nil {
				fl.Flush()
			}
		}
		err := action(r.Context(), emit)
		st := d.chartsPart.charts.Status()
		final := apitype.MonitoringEvent{Time: time.Now(), Done: true, Status: &st}
		if err != nil {
			final.Error = err.Error()
		}
		emit(final)
	}
}
