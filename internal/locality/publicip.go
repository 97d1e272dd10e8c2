package locality

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/logging"
	"github.com/pipeops/pipeops-vm-agent/internal/state"
)

// maxLookupBody bounds a lookup service's answer: an address is < 64 bytes.
const maxLookupBody = 256

// PublicIP is register.server_ip (§4.1): agent.server_ip; else the address
// the lookup services reported within the last hour; else the services in
// order, each with a short timeout; else the last reported one, however
// old; else the local outbound address; else 0.0.0.0.
func (l *Locator) PublicIP(ctx context.Context) string {
	if l.o.ServerIP != "" {
		return l.o.ServerIP
	}
	cached, at := l.cachedIP()
	if cached != "" && l.o.Now().Sub(at) < l.o.CacheTTL {
		return cached
	}
	var errs []string
	for _, svc := range l.o.LookupServices {
		ip, err := l.lookup(ctx, svc)
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		l.storeIP(ip)
		return ip
	}
	if len(errs) > 0 {
		l.o.Log.Warn("public address lookup failed; registering with a fallback address "+
			"(set agent.server_ip when this host is behind NAT)", "errors", strings.Join(errs, "; "), "cached", cached)
	}
	if cached != "" {
		return cached
	}
	if ip := l.o.LocalIP(); ip != "" {
		return ip
	}
	return "0.0.0.0"
}

// lookup asks one service. Anything but one public address is refused.
func (l *Locator) lookup(ctx context.Context, svc string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, l.o.LookupTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, svc, nil)
	if err != nil {
		return "", fmt.Errorf("%s: %w", svc, err)
	}
	req.Header.Set("Accept", "text/plain")
	resp, err := l.o.Lookup.Do(req)
	if err != nil {
		return "", fmt.Errorf("%s: %w", svc, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: HTTP %d", svc, resp.StatusCode)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxLookupBody+1))
	if err != nil {
		return "", fmt.Errorf("%s: %w", svc, err)
	}
	if len(b) > maxLookupBody {
		return "", fmt.Errorf("%s: answer longer than %d bytes is not an address", svc, maxLookupBody)
	}
	ip, err := parsePublic(strings.TrimSpace(string(b)))
	if err != nil {
		return "", fmt.Errorf("%s: %w", svc, err)
	}
	return ip, nil
}

var errNotPublic = errors.New("not a public address")

// parsePublic accepts one global unicast address outside the private,
// loopback and link-local ranges.
func parsePublic(s string) (string, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return "", fmt.Errorf("answer %q is not an IP address", clip(s, 40))
	}
	a = a.Unmap()
	if !a.IsGlobalUnicast() || a.IsPrivate() || a.IsLoopback() || a.IsLinkLocalUnicast() {
		return "", fmt.Errorf("answer %s: %w", a, errNotPublic)
	}
	return a.String(), nil
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

func (l *Locator) cachedIP() (string, time.Time) {
	if l.o.State != nil {
		st := l.o.State.Get()
		return st.PublicIP, st.PublicIPCheckedAt
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.publicIP, l.publicAt
}

func (l *Locator) storeIP(ip string) {
	now := l.o.Now()
	if l.o.State == nil {
		l.mu.Lock()
		l.publicIP, l.publicAt = ip, now
		l.mu.Unlock()
		return
	}
	err := l.o.State.Update(func(s *state.State) error {
		s.PublicIP, s.PublicIPCheckedAt = ip, now
		return nil
	})
	if err != nil {
		l.o.Log.Warn("cannot cache the public address in the state file", logging.KeyErr, err)
	}
}
