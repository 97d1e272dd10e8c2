package svcresolve

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/egress"
)

// clusterIPProbe bounds the first dial to a ClusterIP: on a host where
// kube-proxy does not program ClusterIPs the SYN goes nowhere, and waiting
// the full dial timeout before falling back to an endpoint is too slow.
const clusterIPProbe = 3 * time.Second

// Dial connects to Service port `port` of namespace/name over network ("tcp"
// or "udp") and returns the connection and the address it reached. It
// applies §14.2: the ClusterIP first (unless it is an address of this host,
// as under kube-proxy's IPVS mode: see viaClusterIP); when that cannot be reached (timeout,
// no route) ClusterIPs are marked unroutable and a ready endpoint is dialled
// instead. A refused connection is final: the ClusterIP is routed and the
// Service simply does not answer. Every dial goes through the egress
// policy, on the address actually dialled (an ExternalName after it
// resolved); a refusal is final too and wraps egress.ErrRefused.
func (r *Resolver) Dial(ctx context.Context, network, namespace, name string, port int) (net.Conn, string, error) {
	t, err := r.lookup(ctx, network, namespace, name, port)
	if err != nil {
		return nil, "", err
	}
	d := r.policy
	if t.external != "" {
		c, err := d.DialContext(ctx, network, t.external)
		if err != nil {
			return nil, t.external, fmt.Errorf("dial ExternalName service %s/%s at %s: %w", namespace, name, t.external, err)
		}
		return c, t.external, nil
	}
	if r.viaClusterIP(t) {
		if network == "udp" {
			// UDP has no handshake to prove routability; trust the ClusterIP.
			c, err := d.DialContext(ctx, network, t.clusterIP)
			return c, t.clusterIP, err
		}
		pctx, cancel := context.WithTimeout(ctx, clusterIPProbe)
		c, err := d.DialContext(pctx, network, t.clusterIP)
		cancel()
		if err == nil {
			return c, t.clusterIP, nil
		}
		if ctx.Err() != nil || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, egress.ErrRefused) {
			return nil, t.clusterIP, fmt.Errorf("dial service %s/%s at ClusterIP %s: %w", namespace, name, t.clusterIP, err)
		}
		r.MarkClusterIPsUnroutable()
	}
	addr, err := r.endpoint(t)
	if err != nil {
		return nil, "", err
	}
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, addr, fmt.Errorf("dial service %s/%s at endpoint %s: %w", namespace, name, addr, err)
	}
	return c, addr, nil
}
