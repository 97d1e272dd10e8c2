package daemon

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

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
	hc := &http.Client{Transport: &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:     tc,
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConnsPerHost: 2,
		IdleConnTimeout:     90 * time.Second,
		ForceAttemptHTTP2:   true,
	}}
	// protocol.md §11 names the reference's gateway_route_sync_* metrics; ours
	// carry the agent's pipeops_agent_ prefix like every other agent metric.
	attempts := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pipeops_agent_gateway_route_sync_attempts_total",
		Help: "Route registration REST attempts (register, sync, unregister), each HTTP try counted.",
	}, []string{"operation"})
	failures := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pipeops_agent_gateway_route_sync_failures_total",
		Help: "Route registration REST attempts that did not get HTTP 200.",
	}, []string{"operation"})
	d.reg.MustRegister(attempts, failures)
	for _, op := range []string{routesync.OpRegister, routesync.OpSync, routesync.OpUnregister} {
		attempts.WithLabelValues(op)
		failures.WithLabelValues(op)
	}

	s := routesync.New(routesync.Options{
		Kube:            d.kubePart.mgr.WaitClientset,
		APIURL:          d.cfg.PipeOps.APIURL,
		Token:           func() string { return d.cfg.PipeOps.Token.Reveal() },
		HTTPClient:      hc,
		ClusterID:       d.routeClusterID,
		RefreshInterval: d.cfg.Gateway.RefreshInterval.Std(),
		ForceTunnel:     d.cfg.Gateway.ForceTunnelMode,
		OnAttempt: func(op string, err error) {
			attempts.WithLabelValues(op).Inc()
			if err != nil {
				failures.WithLabelValues(op).Inc()
			}
		},
		Health: d.health,
		Log:    d.log.With(logging.KeyComponent, "routes"),
	})
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
	d.fillers = append(d.fillers, func(_ context.Context, st *apitype.StatusResponse) {
		rs := s.Status()
		st.Routes.Count = rs.Routes
		st.Routes.RoutingMode = rs.RoutingMode
		st.Routes.PublicEndpoint = rs.PublicEndpoint
		st.Routes.IngressController = rs.Controller
		st.Routes.LastSync = rs.LastSync
		st.Routes.LastSyncResult = rs.LastSyncResult
		st.Routes.LastError = rs.LastError
	})
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
