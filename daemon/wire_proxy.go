package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/egress"
	"github.com/pipeops/pipeops-vm-agent/internal/kubeproxy"
	"github.com/pipeops/pipeops-vm-agent/internal/logging"
	"github.com/pipeops/pipeops-vm-agent/internal/svcresolve"
)

// proxyPart holds what the proxy wiring builds. Owned by wire_proxy.go.
// Later parts may share d.proxyPart.resolver (svcresolve, protocol.md §14.2)
// instead of starting a second set of Service/EndpointSlice informers.
type proxyPart struct {
	proxy    *kubeproxy.Proxy
	resolver *lateResolver
	egress   *egress.Policy // the dial policy of every Service target (proxy, relay, tunnel)
}

// wireProxy builds the proxy_request handler (protocol.md §6) and registers
// it on the control-plane link.
func (d *Daemon) wireProxy() error {
	log := d.log.With(logging.KeyComponent, "proxy")
	pol, err := egress.New(egress.Options{Allow: d.cfg.Security.AllowedTargets(), Registerer: d.reg,
		Log: d.log.With(logging.KeyComponent, "egress")})
	if err != nil {
		return fmt.Errorf("dial policy: %w", err)
	}
	d.proxyPart.egress = pol
	d.proxyPart.resolver = &lateResolver{}
	p, err := kubeproxy.New(kubeproxy.Options{
		Log:              log,
		RESTConfig:       d.kubePart.mgr.ProxyConfig,
		Resolver:         d.proxyPart.resolver,
		Routes:           d.ingressRoutes(), // reads the route syncer when called; routes are wired after the proxy
		MaxInFlight:      d.cfg.Proxy.MaxInFlight,
		MaxBufferedBytes: d.cfg.Proxy.MaxBufferedBytes,
		MemoryBudget:     d.cfg.Proxy.MemoryBudget,
		Egress:           pol,
		DefaultTimeout:   time.Duration(d.cfg.Proxy.DefaultTimeout),
		ClusterDomain:    d.cfg.Kubernetes.ClusterDomain,
		Registerer:       d.reg,
		KubeUnreachable:  d.kubePart.mgr.Unreachable,
		KubeFailed:       d.kubePart.mgr.Nudge,
	})
	if err != nil {
		return fmt.Errorf("proxy: %w", err)
	}
	d.proxyPart.proxy = p
	d.cpPart.cp.Register(p)
	d.cpPart.cp.OnShutdown(p.Drain) // in-flight calls answer before the link closes (§8.7)
	d.fillers = append(d.fillers, func(_ context.Context, st *apitype.StatusResponse) { st.Proxy = p.Status() })
	// The resolver needs the ServiceAccount clientset, which exists only
	// after the Kubernetes part bootstrapped; until then Service calls use
	// the API server's service proxy.
	d.addSubsystem("svcresolve", func(ctx context.Context) error {
		cs, err := d.kubePart.mgr.WaitClientset(ctx)
		if err != nil {
			return nil // shutting down before bootstrap finished
		}
		r := svcresolve.New(cs, pol, log.With(logging.KeyComponent, "svcresolve"))
		d.proxyPart.resolver.r.Store(r)
		return r.Run(ctx)
	})
	return nil
}

// errResolverNotReady sends Service calls to the API server service proxy.
var errResolverNotReady = errors.New("service resolver not started yet")

// lateResolver is a svcresolve.Resolver that appears once bootstrap is done.
type lateResolver struct {
	r atomic.Pointer[svcresolve.Resolver]
}

var (
	_ kubeproxy.ServiceResolver = (*lateResolver)(nil)
	_ kubeproxy.ServiceDialer   = (*lateResolver)(nil)
)

// Resolve implements kubeproxy.ServiceResolver.
func (l *lateResolver) Resolve(ctx context.Context, namespace, name string, port int) (string, error) {
	r := l.r.Load()
	if r == nil {
		return "", errResolverNotReady
	}
	return r.Resolve(ctx, namespace, name, port)
}

// Dial implements kubeproxy.ServiceDialer (and the tunnel's ServiceDialer).
func (l *lateResolver) Dial(ctx context.Context, network, namespace, name string, port int) (net.Conn, string, error) {
	r := l.r.Load()
	if r == nil {
		return nil, "", errResolverNotReady
	}
	return r.Dial(ctx, network, namespace, name, port)
}
