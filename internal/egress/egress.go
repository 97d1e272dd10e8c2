// Package egress is the agent's one dial policy for every address the
// control plane or a cluster object can steer it to: Service targets of
// `proxy_request` (a ClusterIP, an EndpointSlice address or an ExternalName),
// the app WebSocket relay, and tunnel streams to Services. The check runs at
// dial time on the address actually dialled (a net.Dialer Control hook,
// after name resolution), so a name that resolves differently later (DNS
// rebinding) cannot slip past an earlier check.
//
// Refused unless an operator lists the address in security.allowed_target_cidrs:
// loopback (127.0.0.0/8, ::1), link-local (169.254.0.0/16, fe80::/10, where
// cloud metadata services live), the unspecified address (0.0.0.0/8, ::),
// multicast and broadcast, the IPv4-mapped IPv6 forms of all of these, and
// every address of this host's own interfaces. Nothing else widens the policy.
// The Kubernetes API server (reached through the kubeconfig) and the named
// forwards of tunnel.forwards (the operator's explicit choice) do not dial
// through it.
//
// kubeproxy, svcresolve and the daemon import it; it imports logging and the
// Prometheus client only.
package egress

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pipeops/pipeops-vm-agent/internal/logging"
)

// ConfigKey is the one configuration key that widens the policy.
const ConfigKey = "security.allowed_target_cidrs"

// Reason says why an address is refused; it is the metric's label value.
type Reason string

// Reasons.
const (
	ReasonLoopback    Reason = "loopback"
	ReasonLinkLocal   Reason = "link_local"
	ReasonUnspecified Reason = "unspecified"
	ReasonMulticast   Reason = "multicast"
	ReasonHost        Reason = "host_address"
)

var reasons = []Reason{ReasonLoopback, ReasonLinkLocal, ReasonUnspecified, ReasonMulticast, ReasonHost}

// ErrRefused is wrapped by every *RefusedError.
var ErrRefused = errors.New("target refused by the agent's dial policy")

// RefusedError is a dial the policy refused. Its message names the target,
// the reason and the key that would allow it.
type RefusedError struct {
	Target string         // what was dialled, e.g. "localhost:8080"
	Addr   netip.AddrPort // the address it resolved to
	Reason Reason
	Iface  string // the interface holding the address, for ReasonHost
}

func (e *RefusedError) Error() string {
	addr := e.Addr.Addr().Unmap()
	what := e.Addr.String()
	if e.Target != "" && e.Target != what {
		what = fmt.Sprintf("%s (resolved to %s)", e.Target, e.Addr)
	}
	var why string
	switch e.Reason {
	case ReasonLoopback:
		why = addr.String() + " is a loopback address of this host"
	case ReasonLinkLocal:
		why = addr.String() + " is a link-local address (the cloud metadata service lives at 169.254.169.254)"
	case ReasonUnspecified:
		why = addr.String() + " is the unspecified address, which reaches this host"
	case ReasonMulticast:
		why = addr.String() + " is a multicast or broadcast address"
	case ReasonHost:
		why = addr.String() + " is an address of this host"
		if e.Iface != "" {
			why += " (interface " + e.Iface + ")"
		}
	default:
		why = addr.String() + " is not allowed"
	}
	return fmt.Sprintf("refused to connect to %s: %s, and targets named by the control plane or by cluster objects "+
		"may not reach this host's loopback, link-local or own addresses; to allow it, add %s to %s in /etc/pipeops/agent.d/*.yaml",
		what, why, single(addr), ConfigKey)
}

func (e *RefusedError) Unwrap() error { return ErrRefused }

func single(a netip.Addr) string {
	if a.Is4() {
		return a.String() + "/32"
	}
	return a.WithZone("").String() + "/128"
}

// Options configure a Policy. The zero value is the strict policy.
type Options struct {
	// Allow lists the operator's extra CIDRs (security.allowed_target_cidrs).
	Allow []netip.Prefix
	// Registerer receives pipeops_agent_egress_refused_total; nil skips it.
	Registerer prometheus.Registerer
	// Log receives one warning per refused target per LogEvery.
	Log *slog.Logger
	// HostAddrs lists this host's interface addresses; nil reads the
	// interfaces (tests inject their own).
	HostAddrs func() ([]HostAddr, error)
	// Now is the clock; nil is time.Now.
	Now func() time.Time
}

// HostAddr is one address of this host.
type HostAddr struct {
	Iface string
	Addr  netip.Addr
}

// LogEvery is how often a refusal of the same target is logged again.
const LogEvery = 5 * time.Minute

// hostAddrsTTL bounds how stale the cached interface addresses may be.
const hostAddrsTTL = 2 * time.Second

// Policy is the dial policy. Build it with New; it is safe for concurrent use.
type Policy struct {
	allow     []netip.Prefix
	log       *slog.Logger
	limiter   *logging.Limiter
	refused   *prometheus.CounterVec
	hostAddrs func() ([]HostAddr, error)
	now       func() time.Time

	mu      sync.Mutex
	host    map[netip.Addr]string
	hostAt  time.Time
	hostErr error
}

// New builds a Policy.
func New(o Options) (*Policy, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.HostAddrs == nil {
		o.HostAddrs = interfaceAddrs
	}
	p := &Policy{log: o.Log, limiter: logging.NewLimiter(LogEvery, o.Now), hostAddrs: o.HostAddrs, now: o.Now}
	for _, pr := range o.Allow {
		p.allow = append(p.allow, normalize(pr))
	}
	p.refused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pipeops_agent_egress_refused_total",
		Help: "Dials to a target named by the control plane or a cluster object that the dial policy refused, by reason (" + ConfigKey + " allows more).",
	}, []string{"reason"})
	for _, r := range reasons {
		p.refused.WithLabelValues(string(r))
	}
	if o.Registerer != nil {
		if err := o.Registerer.Register(p.refused); err != nil {
			return nil, fmt.Errorf("register egress metrics: %w", err)
		}
	}
	return p, nil
}

// normalize turns an IPv4-mapped prefix into its IPv4 form, so "::ffff:10.0.0.0/104"
// and "10.0.0.0/8" mean the same.
func normalize(p netip.Prefix) netip.Prefix {
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		return netip.PrefixFrom(a.Unmap(), p.Bits()-96).Masked()
	}
	return p.Masked()
}

// Check reports whether a may be dialled: nil, or a *RefusedError.
func (p *Policy) Check(a netip.Addr) error {
	a = a.Unmap()
	reason := classify(a)
	iface := ""
	if reason == "" {
		if name, ok := p.hostAddr(a); ok {
			reason, iface = ReasonHost, name
		}
	}
	if reason == "" {
		return nil
	}
	for _, pr := range p.allow {
		if pr.Contains(a.WithZone("")) {
			return nil
		}
	}
	return &RefusedError{Addr: netip.AddrPortFrom(a, 0), Reason: reason, Iface: iface}
}

// classify is the fixed part of the policy.
func classify(a netip.Addr) Reason {
	switch {
	case a.IsLoopback():
		return ReasonLoopback
	case a.IsLinkLocalUnicast(), a.IsLinkLocalMulticast():
		return ReasonLinkLocal
	case a.IsUnspecified(), a.Is4() && a.As4()[0] == 0:
		return ReasonUnspecified // 0.0.0.0/8 is "this network": Linux delivers 0.0.0.0 locally
	case a.IsMulticast(), a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return ReasonMulticast // a UDP stream could otherwise broadcast on the host's networks
	}
	return ""
}

// hostAddr reports whether a is one of this host's interface addresses.
func (p *Policy) hostAddr(a netip.Addr) (string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if now := p.now(); p.host == nil || now.Sub(p.hostAt) > hostAddrsTTL {
		addrs, err := p.hostAddrs()
		if err == nil || p.host == nil { // keep the last good list on a failed refresh
			m := make(map[netip.Addr]string, len(addrs))
			for _, h := range addrs {
				m[h.Addr.Unmap().WithZone("")] = h.Iface
			}
			p.host, p.hostErr = m, err
		}
		p.hostAt = now
	}
	name, ok := p.host[a.WithZone("")]
	return name, ok
}

func interfaceAddrs() ([]HostAddr, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("list network interfaces: %w", err)
	}
	var out []HostAddr
	for _, ifc := range ifs {
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			var ip net.IP
			switch v := a.(type) {
			case *net.IPNet:
				ip = v.IP
			case *net.IPAddr:
				ip = v.IP
			}
			if na, ok := netip.AddrFromSlice(ip); ok {
				out = append(out, HostAddr{Iface: ifc.Name, Addr: na.Unmap()})
			}
		}
	}
	return out, nil
}
