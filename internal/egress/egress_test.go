package egress

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func hostAddrs(addrs ...string) func() ([]HostAddr, error) {
	return func() ([]HostAddr, error) {
		var out []HostAddr
		for _, a := range addrs {
			out = append(out, HostAddr{Iface: "eth0", Addr: netip.MustParseAddr(a)})
		}
		return out, nil
	}
}

func mustNew(t *testing.T, o Options) *Policy {
	t.Helper()
	p, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestThePolicyRefusesTheHostsOwnLoopbackLinkLocalAndUnspecifiedAddresses(t *testing.T) {
	p := mustNew(t, Options{HostAddrs: hostAddrs("192.0.2.2", "fd00::2")})
	for _, tc := range []struct {
		addr string
		want Reason
	}{
		{"127.0.0.1", ReasonLoopback},
		{"127.8.9.10", ReasonLoopback},
		{"::1", ReasonLoopback},
		{"::ffff:127.0.0.1", ReasonLoopback},
		{"169.254.169.254", ReasonLinkLocal},
		{"::ffff:169.254.169.254", ReasonLinkLocal},
		{"fe80::1", ReasonLinkLocal},
		{"fe80::1%eth0", ReasonLinkLocal},
		{"0.0.0.0", ReasonUnspecified},
		{"0.1.2.3", ReasonUnspecified},
		{"::", ReasonUnspecified},
		{"::ffff:0.0.0.0", ReasonUnspecified},
		{"224.0.0.1", ReasonLinkLocal}, // link-local multicast
		{"239.1.2.3", ReasonMulticast},
		{"255.255.255.255", ReasonMulticast},
		{"ff05::2", ReasonMulticast},
		{"192.0.2.2", ReasonHost},
		{"::ffff:192.0.2.2", ReasonHost},
		{"fd00::2", ReasonHost},
		{"10.43.0.10", ""},
		{"10.42.0.7", ""},
		{"192.0.2.3", ""},
		{"fd00::3", ""},
		{"93.184.215.14", ""},
	} {
		t.Run(tc.addr, func(t *testing.T) {
			err := p.Check(netip.MustParseAddr(tc.addr))
			var re *RefusedError
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Check(%s) = %v; want allowed", tc.addr, err)
			case tc.want != "" && (!errors.As(err, &re) || re.Reason != tc.want || !errors.Is(err, ErrRefused)):
				t.Fatalf("Check(%s) = %v; want refused as %s", tc.addr, err, tc.want)
			}
		})
	}
}

func TestTheAllowListIsTheOnlyWayToWidenThePolicy(t *testing.T) {
	var allow []netip.Prefix
	for _, c := range []string{"127.0.0.1/32", "169.254.0.0/16", "::ffff:192.0.2.0/120", "fe80::1/128"} {
		allow = append(allow, netip.MustParsePrefix(c))
	}
	p := mustNew(t, Options{Allow: allow, HostAddrs: hostAddrs("192.0.2.2")})
	for _, a := range []string{"127.0.0.1", "::ffff:127.0.0.1", "169.254.169.254", "192.0.2.2", "fe80::1%eth0"} {
		if err := p.Check(netip.MustParseAddr(a)); err != nil {
			t.Errorf("Check(%s) = %v; the allow-list permits it", a, err)
		}
	}
	for _, a := range []string{"127.0.0.2", "::1", "fe80::2"} {
		if err := p.Check(netip.MustParseAddr(a)); err == nil {
			t.Errorf("Check(%s) allowed; the allow-list does not name it", a)
		}
	}
}

func TestARefusedDialNamesTheTargetTheReasonAndTheKeyAndConnectsNothing(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan struct{}, 8)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- struct{}{}
			c.Close()
		}
	}()
	var logs bytes.Buffer
	reg := prometheus.NewRegistry()
	p := mustNew(t, Options{Registerer: reg, Log: slog.New(slog.NewJSONHandler(&logs, nil))})
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	target := net.JoinHostPort("localhost", port)
	for i := 0; i < 3; i++ {
		c, err := p.DialContext(context.Background(), "tcp", target)
		if err == nil {
			c.Close()
			t.Fatal("the dial to localhost was allowed")
		}
		var re *RefusedError
		if !errors.As(err, &re) || re.Reason != ReasonLoopback || re.Target != target {
			t.Fatalf("err = %#v; want a loopback refusal of %s", err, target)
		}
		for _, want := range []string{target, "loopback", ConfigKey, single(re.Addr.Addr())} {
			if !strings.Contains(err.Error(), want) {
				t.Fatalf("message %q does not name %q", err, want)
			}
		}
	}
	if n := testutil.ToFloat64(p.refused.WithLabelValues(string(ReasonLoopback))); n != 3 {
		t.Fatalf("pipeops_agent_egress_refused_total{reason=loopback} = %v; want 3 (one per refused dial)", n)
	}
	if n := strings.Count(logs.String(), "refused a target"); n != 1 {
		t.Fatalf("logged %d times; want once per target:\n%s", n, logs.String())
	}
	select {
	case <-accepted:
		t.Fatal("the listener accepted a connection: the check ran after connect")
	default:
	}

	// The operator's allow-list opens exactly that address.
	p2 := mustNew(t, Options{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}})
	c, err := p2.DialContext(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("allowed dial: %v", err)
	}
	c.Close()
	select {
	case <-accepted:
	case <-time.After(5 * time.Second):
		t.Fatal("the allowed dial did not reach the listener")
	}
}

func TestUDPDialsAreCheckedToo(t *testing.T) {
	p := mustNew(t, Options{})
	if _, err := p.DialContext(context.Background(), "udp", "127.0.0.1:53"); !errors.Is(err, ErrRefused) {
		t.Fatalf("udp dial to loopback: %v; want refused", err)
	}
}

func TestTheHostsRealInterfaceAddressesAreRefused(t *testing.T) {
	addrs, err := interfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	p := mustNew(t, Options{})
	for _, h := range addrs {
		if err := p.Check(h.Addr); err == nil {
			t.Errorf("Check(%s on %s) allowed; an address of this host must be refused", h.Addr, h.Iface)
		}
	}
}
