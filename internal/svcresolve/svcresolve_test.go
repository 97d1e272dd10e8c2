package svcresolve

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pipeops/pipeops-vm-agent/internal/egress"
	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

func TestMain(m *testing.M) { kubetest.Main(m) }

// start runs a Resolver against the test cluster until the test ends;
// allow lists what the dial policy permits beyond its defaults.
func start(t *testing.T, cs kubernetes.Interface, allow ...string) *Resolver {
	t.Helper()
	var prefixes []netip.Prefix
	for _, a := range allow {
		prefixes = append(prefixes, netip.MustParsePrefix(a))
	}
	pol, err := egress.New(egress.Options{Allow: prefixes})
	if err != nil {
		t.Fatal(err)
	}
	return startWith(t, cs, pol)
}

// startWith runs a Resolver whose Dial applies pol until the test ends.
func startWith(t *testing.T, cs kubernetes.Interface, pol *egress.Policy) *Resolver {
	t.Helper()
	r := New(cs, pol, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = r.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return r
}

func ptr[T any](v T) *T { return &v }

func createService(t *testing.T, cs kubernetes.Interface, ns string, svc *corev1.Service) {
	t.Helper()
	svc.Namespace = ns
	if _, err := cs.CoreV1().Services(ns).Create(context.Background(), svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func createSlice(t *testing.T, cs kubernetes.Interface, ns, svc, name string, ports []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) {
	t.Helper()
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4, Ports: ports, Endpoints: eps,
	}
	if _, err := cs.DiscoveryV1().EndpointSlices(ns).Create(context.Background(), s, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// resolveEventually retries until the informers saw the objects.
func resolveEventually(t *testing.T, r *Resolver, network, ns, name string, port int, want string) {
	t.Helper()
	var got string
	var err error
	testbin.Eventually(t, 10*time.Second, fmt.Sprintf("Resolve(%s/%s:%d %s) = %q", ns, name, port, network, want), func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		got, err = r.ResolveNetwork(ctx, network, ns, name, port)
		return err == nil && got == want
	}, func() string { return fmt.Sprintf("got %q, %v", got, err) })
}

func TestServicesResolveToClusterIPEndpointsOrExternalNames(t *testing.T) {
	env := kubetest.Cluster(t)
	cs, ns := env.Client, env.Namespace
	createService(t, cs, ns, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web"}, Spec: corev1.ServiceSpec{
		Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt(8080)}, {Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP}}}})
	createService(t, cs, ns, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "db"}, Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone,
		Ports: []corev1.ServicePort{{Name: "pg", Port: 5432}, {Name: "metrics", Port: 9187}}}})
	createService(t, cs, ns, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "outside"}, Spec: corev1.ServiceSpec{
		Type: corev1.ServiceTypeExternalName, ExternalName: "localhost"}})
	createSlice(t, cs, ns, "db", "db-a", []discoveryv1.EndpointPort{{Name: ptr("pg"), Port: ptr(int32(15432))}, {Name: ptr("metrics"), Port: ptr(int32(19187))}},
		discoveryv1.Endpoint{Addresses: []string{"10.244.0.9"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(false)}},
		discoveryv1.Endpoint{Addresses: []string{"10.244.0.7"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)}})
	createSlice(t, cs, ns, "web", "web-a", []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(8080))}},
		discoveryv1.Endpoint{Addresses: []string{"10.244.1.3"}})
	web, err := cs.CoreV1().Services(ns).Get(context.Background(), "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r := start(t, cs)

	t.Run("a ClusterIP Service resolves to its ClusterIP and the Service port", func(t *testing.T) {
		resolveEventually(t, r, "tcp", ns, "web", 80, net.JoinHostPort(web.Spec.ClusterIP, "80"))
	})
	t.Run("a headless Service resolves to a ready endpoint on the port of the same name", func(t *testing.T) {
		resolveEventually(t, r, "tcp", ns, "db", 9187, "10.244.0.7:19187")
		resolveEventually(t, r, "tcp", ns, "db", 5432, "10.244.0.7:15432")
	})
	t.Run("an ExternalName Service resolves through the host resolver's name", func(t *testing.T) {
		resolveEventually(t, r, "tcp", ns, "outside", 8443, "localhost:8443")
	})
	t.Run("a UDP port is matched by protocol", func(t *testing.T) {
		resolveEventually(t, r, "udp", ns, "web", 53, net.JoinHostPort(web.Spec.ClusterIP, "53"))
	})
	t.Run("unroutable ClusterIPs fall back to endpoints", func(t *testing.T) {
		r.MarkClusterIPsUnroutable()
		defer r.unroutable.Store(0)
		resolveEventually(t, r, "tcp", ns, "web", 80, "10.244.1.3:8080")
	})
	for _, tc := range []struct {
		name, svc string
		port      int
		network   string
		want      error
	}{
		{"a missing Service is not found", "nope", 80, "tcp", ErrNotFound},
		{"a port the Service lacks is not found", "web", 81, "tcp", ErrNotFound},
		{"a TCP lookup of a UDP-only port is not found", "web", 53, "tcp", ErrNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err := r.ResolveNetwork(ctx, tc.network, ns, tc.svc, tc.port)
			if !errors.Is(err, tc.want) || !IsNotFound(err) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestDialReachesAHostProcessBehindAnExternalNameService(t *testing.T) {
	env := kubetest.Cluster(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			_, _ = c.Write([]byte("hello from the host"))
			c.Close()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	createService(t, env.Client, env.Namespace, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "host"}, Spec: corev1.ServiceSpec{
		Type: corev1.ServiceTypeExternalName, ExternalName: "localhost"}})
	// Loopback is allowed only because the operator listed it (security.allowed_target_cidrs).
	r := start(t, env.Client, "127.0.0.1/32")
	resolveEventually(t, r, "tcp", env.Namespace, "host", port, "localhost:"+strconv.Itoa(port))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	strict := start(t, env.Client)
	resolveEventually(t, strict, "tcp", env.Namespace, "host", port, "localhost:"+strconv.Itoa(port))
	if c, addr, err := strict.Dial(ctx, "tcp", env.Namespace, "host", port); !errors.Is(err, egress.ErrRefused) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("without the allow-list, Dial reached %s (%v); want a refusal", addr, err)
	}
	c, addr, err := r.Dial(ctx, "tcp", env.Namespace, "host", port)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	got, _ := io.ReadAll(c)
	if string(got) != "hello from the host" {
		t.Fatalf("got %q", got)
	}
}

func TestADeferredResolverRefusesAtOnceUntilItsClientsetArrives(t *testing.T) {
	env := kubetest.Cluster(t)
	cs, ns := env.Client, env.Namespace
	createService(t, cs, ns, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web"}, Spec: corev1.ServiceSpec{
		Ports: []corev1.ServicePort{{Name: "http", Port: 80}}}})
	web, err := cs.CoreV1().Services(ns).Get(context.Background(), "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	arrive := make(chan struct{})
	r := NewDeferred(func(ctx context.Context) (kubernetes.Interface, error) {
		select {
		case <-arrive:
			return cs, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}, nil, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v; want nil after cancel", err)
		}
	}()

	// A caller with all the time in the world is not kept waiting.
	if _, err := r.Resolve(context.Background(), ns, "web", 80); !errors.Is(err, ErrNotStarted) {
		t.Fatalf("Resolve before the clientset = %v; want ErrNotStarted", err)
	}
	if _, _, err := r.Dial(context.Background(), "tcp", ns, "web", 80); !errors.Is(err, ErrNotStarted) {
		t.Fatalf("Dial before the clientset = %v; want ErrNotStarted", err)
	}
	close(arrive)
	resolveEventually(t, r, "tcp", ns, "web", 80, net.JoinHostPort(web.Spec.ClusterIP, "80"))
}

func TestADeferredResolverStopsCleanlyBeforeItsClientsetArrives(t *testing.T) {
	r := NewDeferred(func(ctx context.Context) (kubernetes.Interface, error) { <-ctx.Done(); return nil, ctx.Err() }, nil, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := r.Run(ctx); err != nil {
		t.Fatalf("Run = %v; want nil when ctx ends first", err)
	}
}

// TestAClusterIPBoundToThisHostIsReachedAtAnEndpoint is kube-proxy's IPVS
// mode, which binds every ClusterIP to the host's kube-ipvs0 interface: the
// dial policy refuses the host's own addresses, so the Service is dialled at
// its ready endpoint instead (a real listener on this host's non-loopback
// address, which the test's allow-list permits), at once, without a refusal
// counted and without marking every ClusterIP unroutable.
func TestAClusterIPBoundToThisHostIsReachedAtAnEndpoint(t *testing.T) {
	env := kubetest.Cluster(t)
	cs, ns := env.Client, env.Namespace
	hostIP := nonLoopbackIPv4(t)
	ln := testbin.ServeTCP(t, net.JoinHostPort(hostIP.String(), "0"), func(c net.Conn) {
		_, _ = c.Write([]byte("hello from the endpoint"))
		c.Close()
	})
	port := ln.Addr().(*net.TCPAddr).Port
	createService(t, cs, ns, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web"}, Spec: corev1.ServiceSpec{
		Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt(port)}}}})
	createSlice(t, cs, ns, "web", "web-a", []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(port))}},
		discoveryv1.Endpoint{Addresses: []string{hostIP.String()}})
	web, err := cs.CoreV1().Services(ns).Get(context.Background(), "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	clusterIP := netip.MustParseAddr(web.Spec.ClusterIP)
	hostAddrs := func() ([]egress.HostAddr, error) {
		return []egress.HostAddr{{Iface: "eth0", Addr: hostIP}, {Iface: "kube-ipvs0", Addr: clusterIP}}, nil
	}

	reg := prometheus.NewRegistry()
	pol, err := egress.New(egress.Options{
		Allow:      []netip.Prefix{netip.PrefixFrom(hostIP, 32)}, // the endpoint, as an operator would allow a hostNetwork pod
		Registerer: reg,
		HostAddrs:  hostAddrs,
	})
	if err != nil {
		t.Fatal(err)
	}
	r := startWith(t, cs, pol)

	endpoint := net.JoinHostPort(hostIP.String(), strconv.Itoa(port))
	resolveEventually(t, r, "tcp", ns, "web", 80, endpoint)
	dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer dcancel()
	c, addr, err := r.Dial(dctx, "tcp", ns, "web", 80)
	if err != nil {
		t.Fatalf("Dial = %s, %v; want the endpoint %s", addr, err, endpoint)
	}
	got, _ := io.ReadAll(c)
	c.Close()
	if addr != endpoint || string(got) != "hello from the endpoint" {
		t.Fatalf("Dial reached %s and read %q; want %s and the endpoint's greeting", addr, got, endpoint)
	}
	if r.clusterIPsUnroutable() {
		t.Error("a ClusterIP on this host marked every ClusterIP unroutable; only that route should change")
	}
	for _, reason := range []egress.Reason{egress.ReasonHost, egress.ReasonLoopback} {
		if n := testbin.Metric(t, reg, "pipeops_agent_egress_refused_total", "reason", string(reason)); n != 0 {
			t.Errorf("refusals counted for %s = %v; taking the endpoint route refuses nothing", reason, n)
		}
	}

	// The endpoint itself is still checked: without the allow-list this
	// host's address is refused, with the error that names the key.
	strict, err := egress.New(egress.Options{HostAddrs: hostAddrs})
	if err != nil {
		t.Fatal(err)
	}
	rs := startWith(t, cs, strict)
	resolveEventually(t, rs, "tcp", ns, "web", 80, endpoint)
	if c, addr, err := rs.Dial(dctx, "tcp", ns, "web", 80); !errors.Is(err, egress.ErrRefused) || !strings.Contains(err.Error(), egress.ConfigKey) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("strict Dial = %s, %v; want a refusal of the endpoint that names %s", addr, err, egress.ConfigKey)
	}
}

// nonLoopbackIPv4 is an IPv4 address of one of this host's interfaces.
func nonLoopbackIPv4(t *testing.T) netip.Addr {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() && !p.Addr().IsLoopback() && !p.Addr().IsLinkLocalUnicast() {
			return p.Addr()
		}
	}
	t.Fatalf("this host has no non-loopback IPv4 address (interfaces: %v); the test listens on one as a Service endpoint", addrs)
	return netip.Addr{}
}
