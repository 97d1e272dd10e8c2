package egress

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/logging"
)

// Control is the net.Dialer Control hook: it runs for every address the
// dialer tries, after name resolution and before connect, so it sees the
// address really dialled.
func (p *Policy) Control(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		// The dialer always passes a numeric address; anything else is refused.
		return fmt.Errorf("%w: cannot check address %q: %w", ErrRefused, address, err)
	}
	if err := p.Check(ap.Addr()); err != nil {
		var re *RefusedError
		if errors.As(err, &re) {
			re.Addr = netip.AddrPortFrom(re.Addr.Addr(), ap.Port())
		}
		return err
	}
	return nil
}

// Dialer returns a net.Dialer that applies the policy, with the given
// connect timeout (0: only the context bounds it).
func (p *Policy) Dialer(timeout time.Duration) *net.Dialer {
	return &net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second, Control: p.Control}
}

// DialContext dials address under the policy; ctx bounds the connect. A
// refusal comes back as a *RefusedError naming address; it is counted, and
// logged once per target per LogEvery.
func (p *Policy) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	c, err := p.Dialer(0).DialContext(ctx, network, address)
	if err == nil {
		return c, nil
	}
	var re *RefusedError
	if !errors.As(err, &re) {
		return nil, err
	}
	out := *re // the dialer's copy may be shared by parallel attempts
	out.Target = address
	p.Refused(&out)
	return nil, &out
}

// Refused counts a refusal and logs it, once per target and address per
// LogEvery. DialContext calls it; a caller that dials with Dialer or
// Control itself calls it once per refused target.
func (p *Policy) Refused(re *RefusedError) {
	p.refused.WithLabelValues(string(re.Reason)).Inc()
	if ok, suppressed := p.limiter.Allow(re.Target + "|" + re.Addr.String()); ok {
		p.log.Warn("refused a target named by the control plane or a cluster object",
			"target", re.Target, logging.KeyAddr, re.Addr.String(), logging.KeyReason, string(re.Reason),
			"allow_with", ConfigKey, logging.KeyCount, suppressed)
	}
}
