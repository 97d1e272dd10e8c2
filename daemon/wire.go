package daemon

import "context"

// wire builds the subsystems and connects them, in dependency order. Each
// step lives in its own wire_<part>.go file, owned by that subsystem.
func (d *Daemon) wire() error {
	for _, step := range []func() error{
		d.wireKube,         // kubeconfig discovery, own ServiceAccount, telemetry
		d.wireControlPlane, // WebSocket link, registration, heartbeats
		d.wireProxy,        // proxy_request handler
		d.wireTunnel,       // yamux reverse tunnels
		d.wireRoutes,       // ingress route sync
		d.wireCharts,       // monitoring stack
		d.wireDashboard,    // loopback dashboard
	} {
		if err := step(); err != nil {
			return err
		}
	}
	return nil
}

// addSubsystem registers a long-running part for Run.
func (d *Daemon) addSubsystem(name string, run func(ctx context.Context) error) {
	d.subsystems = append(d.subsystems, subsystem{name: name, run: run})
}
