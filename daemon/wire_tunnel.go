package daemon

import (
	"context"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/logging"
	"github.com/pipeops/pipeops-vm-agent/internal/tunnel"
)

// tunnelPart holds what the tunnel wiring builds. Owned by wire_tunnel.go.
// Later parts add named forwards with d.tunnelPart.tunnel.SetServiceForward
// (e.g. the monitoring stack's grafana, prometheus and loki).
type tunnelPart struct {
	tunnel *tunnel.Manager
}

// wireTunnel builds the yamux reverse tunnel (protocol.md §7): the
// gateway_hello handler on the control-plane link, the configured forwards,
// Services through the shared resolver, and the status section.
func (d *Daemon) wireTunnel() error {
	tc := d.cfg.Tunnel
	if !tc.Enabled {
		// A hello still gets no yamux: binary frames stay JSON (§7.1).
		d.log.Info("tunnel disabled by configuration (tunnel.enabled: false)")
		return nil
	}
	fwd := make(map[string]string, len(tc.Forwards))
	for _, f := range tc.Forwards {
		fwd[f.Name] = f.LocalAddr
	}
	var dialer tunnel.ServiceDialer
	if d.proxyPart.resolver != nil {
		dialer = d.proxyPart.resolver // shares the proxy's Service/EndpointSlice informers
	}
	m := tunnel.New(tunnel.Config{
		StreamWindow:      tc.StreamWindow,
		MaxStreams:        tc.MaxStreams,
		MemoryBudget:      tc.MemoryBudget,
		InactivityTimeout: tc.InactivityTimeout.Std(),
		Forwards:          fwd,
		Health:            d.health,
	}, dialer, d.reg, d.log.With(logging.KeyComponent, "tunnel"))
	d.tunnelPart.tunnel = m
	d.cpPart.cp.Register(m)
	d.fillers = append(d.fillers, func(_ context.Context, st *apitype.StatusResponse) { st.Tunnel = m.Status() })
	d.addSubsystem("tunnel", m.Run)
	return nil
}
