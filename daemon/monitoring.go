package daemon

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"time"

	"k8s.io/client-go/rest"

	"github.com/pipeops/pipeops-vm-agent/internal/config"
	"github.com/pipeops/pipeops-vm-agent/internal/kube"
	"github.com/pipeops/pipeops-vm-agent/internal/monitor"
	"github.com/pipeops/pipeops-vm-agent/internal/paths"
)

// monitoringComponents lists the stack's releases in the install order of
// protocol.md §12: those to keep, and those switched off (listed so status
// says so).
func monitoringComponents(mc config.Monitoring) (enabled, disabled []monitor.Component) {
	for _, c := range mc.Components.Each() {
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
		enabled = append(enabled, comp)
	}
	return enabled, disabled
}

// helmWorker is the monitoring stack's Backend: each round runs in a
// pipeops-agent-helm worker process, so the daemon does not link Helm and
// holds no Helm memory between rounds.
func helmWorker(cfg *config.Config, comps []monitor.Component, km *kube.Manager, log *slog.Logger) *monitor.Exec {
	mc := cfg.Monitoring
	cacheDir := mc.CacheDir
	if cacheDir == "" {
		cacheDir = filepath.Join(paths.CacheDir(), "helm")
	}
	return &monitor.Exec{
		Path: filepath.Base(paths.HelmBinary), // beside pipeops-agent in every install
		Args: []string{"worker"},
		Settings: monitor.Settings{
			Components:     comps,
			Grafana:        mc.Components.Grafana.Enabled && mc.Components.Prometheus.Enabled,
			GrafanaSubPath: cfg.Agent.GrafanaSubPath,
			APIURL:         cfg.PipeOps.APIURL,
			ClusterDomain:  cfg.Kubernetes.ClusterDomain,
			ACMEEmail:      mc.ACMEEmail,
			Profile:        mc.Profile,
			ChartsDir:      mc.ChartsDir,
			CacheDir:       cacheDir,
			Timeout:        mc.Timeout.Std(),
			ReadyTimeout:   mc.ReadyTimeout.Std(),
		},
		Kube:     func(ctx context.Context) (*rest.Config, error) { return adminConfig(ctx, km) },
		LogLevel: cfg.Logging.Level,
		Log:      log,
	}
}

// adminConfig waits (bounded) for kubeconfig discovery and bootstrap: Helm
// installs with the admin identity, never the ServiceAccount's.
func adminConfig(ctx context.Context, km *kube.Manager) (*rest.Config, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if _, err := km.WaitClientset(ctx); err != nil {
		return nil, err
	}
	if c := km.AdminConfig(); c != nil {
		return c, nil
	}
	return nil, errors.New("no admin kubeconfig discovered yet")
}
