package daemon

import (
	"context"
	"fmt"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/controlplane"
	"github.com/pipeops/pipeops-vm-agent/internal/kubeproxy"
	"github.com/pipeops/pipeops-vm-agent/internal/logging"
	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
	"github.com/pipeops/pipeops-vm-agent/internal/routesync"
	"github.com/pipeops/pipeops-vm-agent/internal/tlsconfig"
)

// routesPart holds what the routes wiring builds. Owned by wire_routes.go.
// routes is nil when gateway.enabled is false. The proxy reads it through
// d.ingressRoutes(), which tolerates both that and being wired earlier.
type routesPart struct {
	routes *routesync.Syncer
}

// wireRoutes builds the ingress route sync (protocol.md §9): the watcher and
// REST client, a full sync on every control-plane (re)connection, the
// heartbeat's gateway_routes/is_private, metrics and the status section.
func (d *Daemon) wireRoutes() error {
	if !d.cfg.Gateway.Enabled {
		return nil
	}
	// The same TLS configuration (trust, client certificate, pins) as the
	// WebSocket link: one builder, so the REST calls cannot be weaker.
	tc, err := tlsconfig.New(d.cfg.PipeOps.TLS.Options())
	if err != nil {
		return fmt.Errorf("route sync: %w", err)
	}
	s, err := routesync.New(routesync.Options{
		Kube:            d.kubePart.mgr.WaitClientset,
		APIURL:          d.cfg.PipeOps.APIURL,
		Token:           func() string { return d.cfg.PipeOps.Token.Reveal() },
		TLS:             tc,
		ClusterID:       d.routeClusterID,
		RefreshInterval: d.cfg.Gateway.RefreshInterval.Std(),
		ForceTunnel:     d.cfg.Gateway.ForceTunnelMode,
		Registerer:      d.reg,
		Health:          d.health,
		Log:             d.log.With(logging.KeyComponent, "routes"),
	})
	if err != nil {
		return fmt.Errorf("route sync: %w", err)
	}
	d.routesPart.routes = s
	d.addSubsystem("routes", s.Run)

	if cp := d.cpPart.cp; cp != nil {
		// Every (re)connection may follow a control-plane restart that lost
		// the routes: send the full set again (§9.2).
		cp.OnConnect(func(context.Context, controlplane.Conn) { s.Resync() })
		cp.AddHeartbeatContributor(func(_ context.Context, hb *protocol.Heartbeat) {
			hb.Metadata.GatewayRoutes = s.RouteCount() // managed routes only (§13.11)
			hb.Metadata.IsPrivate = s.IsPrivate()
		})
	}
	d.fillers = append(d.fillers, func(_ context.Context, st *apitype.StatusResponse) { st.Routes = s.Status() })
	return nil
}

// routeClusterID is the id route bodies carry (§15.1): the control-plane
// client's, else the persisted one; "" (nothing sent yet) before registration.
func (d *Daemon) routeClusterID() string {
	if d.cpPart.cp != nil {
		if id := d.cpPart.cp.ClusterID(); id != "" {
			return id
		}
	}
	return d.state.Get().ClusterID
}

// ingressRoutes is the proxy's view of the route cache (§6.3 rules 1 and 4).
// It reads d.routesPart.routes at call time, so the proxy, wired before the
// routes part, may take it in wireProxy: Routes: d.ingressRoutes().
func (d *Daemon) ingressRoutes() kubeproxy.IngressRoutes { return routeCache{d} }

type routeCache struct{ d *Daemon }

func (c routeCache) RouteFor(host string) (kubeproxy.ServiceRef, bool) {
	s := c.d.routesPart.routes
	if s == nil {
		return kubeproxy.ServiceRef{}, false
	}
	ns, name, port, ok := s.Lookup(host)
	return kubeproxy.ServiceRef{Namespace: ns, Name: name, Port: port}, ok
}

func (c routeCache) Controller() (kubeproxy.ServiceRef, bool) {
	s := c.d.routesPart.routes
	if s == nil {
		return kubeproxy.ServiceRef{}, false
	}
	ns, name, port, ok := s.Controller()
	return kubeproxy.ServiceRef{Namespace: ns, Name: name, Port: port}, ok
}
