package daemon

import (
	"log/slog"

	"github.com/pipeops/pipeops-vm-agent/internal/config"
	"github.com/pipeops/pipeops-vm-agent/internal/logging"
	"github.com/pipeops/pipeops-vm-agent/internal/monitor"
	"github.com/pipeops/pipeops-vm-agent/internal/tunnel"
)

// configuredForwards are tunnel.forwards as the tunnel takes them: name → local address.
func configuredForwards(tc config.Tunnel) map[string]string {
	fwd := make(map[string]string, len(tc.Forwards))
	for _, f := range tc.Forwards {
		fwd[f.Name] = f.LocalAddr
	}
	return fwd
}

// forwardMonitoring keeps a tunnel forward for each ready monitoring
// endpoint, so the control plane can open streams to Grafana, Prometheus
// and Loki, and removes those whose component is gone (uninstalled, or no
// longer ready). tun may be nil (tunnel disabled): the calls then do nothing.
func forwardMonitoring(tun *tunnel.Manager, eps []monitor.Endpoint, log *slog.Logger) {
	ready := map[string]bool{}
	for _, e := range eps {
		ready[e.Name] = true
		log.Info("monitoring endpoint ready", "component", e.Name, logging.KeyURL, e.URL)
		tun.SetServiceForward(e.Name, e.Namespace, e.Service, e.Port) // a configured forward of the same name wins
	}
	for _, name := range []string{"prometheus", "loki", "grafana"} {
		if !ready[name] {
			tun.RemoveServiceForward(name)
		}
	}
}
