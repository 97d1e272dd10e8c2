// Package svcresolve turns a Kubernetes Service (namespace, name, Service
// port) into an address the host can dial, as protocol.md §14.2 requires: the
// ClusterIP unless the Service is headless or ClusterIPs are not routable
// from this host, else a ready EndpointSlice address on the port whose name
// matches the Service port's name; ExternalName Services resolve through the
// host resolver. Services and EndpointSlices come from informers, so no
// lookup costs an API request. The yamux tunnel and the Service proxy share it.
// Dial applies the egress policy: no Service, EndpointSlice or ExternalName
// reaches this host's loopback, link-local or own addresses unless
// security.allowed_target_cidrs allows it.
package svcresolve

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/pipeops/pipeops-vm-agent/internal/egress"
)

// Errors callers may test with errors.Is.
var (
	// ErrNotFound: no such Service, or it has no such port.
	ErrNotFound = errors.New("service not found")
	// ErrNoEndpoints: the Service exists but no ready endpoint serves the port.
	ErrNoEndpoints = errors.New("service has no ready endpoints")
	// ErrNotSynced: the caches did not sync before the caller's context ended.
	ErrNotSynced = errors.New("service cache not synced yet")
	// ErrNotStarted: a Resolver built with NewDeferred has no clientset yet
	// (the agent's ServiceAccount is still being set up).
	ErrNotStarted = errors.New("service resolver not started yet")
)

// unroutableFor is how long a ClusterIP dial failure makes Dial and Resolve
// prefer endpoints for every Service (a host without kube-proxy).
const unroutableFor = 5 * time.Minute

// sliceIndex indexes EndpointSlices by "<namespace>/<service name>".
const sliceIndex = "service"

// Resolver resolves Services from informer caches. Build it with New (or
// NewDeferred) and run it with Run; Resolve waits for the first cache sync.
type Resolver struct {
	clientset func(ctx context.Context) (kubernetes.Interface, error)
	ready     atomic.Bool // the clientset arrived: lookups wait for the caches from now on
	policy    *egress.Policy
	log       *slog.Logger

	mu      sync.Mutex
	svcs    cache.Indexer
	slices  cache.Indexer
	synced  chan struct{} // closed once both caches synced
	started bool

	rr         atomic.Uint64 // round-robin over ready endpoints
	unroutable atomic.Int64  // unix nanos until which ClusterIPs are skipped
	now        func() time.Time
}

// New builds a Resolver over client whose Dial applies policy (nil: the
// strict policy, with nothing allowed beyond it). It starts nothing.
func New(client kubernetes.Interface, policy *egress.Policy, log *slog.Logger) *Resolver {
	r := NewDeferred(func(context.Context) (kubernetes.Interface, error) { return client, nil }, policy, log)
	r.ready.Store(true)
	return r
}

// NewDeferred is New for a clientset that exists only later: Run first
// waits for clientset (the agent's ServiceAccount clientset, after
// bootstrap). Until it has one, Resolve and Dial fail at once with
// ErrNotStarted instead of waiting, so the proxy falls back to the API
// server's service proxy. It starts nothing.
func NewDeferred(clientset func(ctx context.Context) (kubernetes.Interface, error), policy *egress.Policy, log *slog.Logger) *Resolver {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if policy == nil {
		policy, _ = egress.New(egress.Options{Log: log}) // fails only when registering metrics
	}
	return &Resolver{clientset: clientset, policy: policy, log: log, synced: make(chan struct{}), now: time.Now}
}

// Run gets the clientset, starts the Service and EndpointSlice informers
// and blocks until ctx ends. It returns nil then.
func (r *Resolver) Run(ctx context.Context) error {
	client, err := r.clientset(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil // shutting down before the clientset existed
		}
		return fmt.Errorf("get the Kubernetes clientset: %w", err)
	}
	r.ready.Store(true)
	r.mu.Lock()
	if r.started {
		r.mu.Unlock()
		<-ctx.Done()
		return nil
	}
	r.started = true
	f := informers.NewSharedInformerFactory(client, 0)
	svcInf := f.Core().V1().Services().Informer()
	sliceInf := f.Discovery().V1().EndpointSlices().Informer()
	if err := sliceInf.AddIndexers(cache.Indexers{sliceIndex: indexByService}); err != nil {
		r.mu.Unlock()
		return fmt.Errorf("index endpoint slices: %w", err)
	}
	r.svcs, r.slices = svcInf.GetIndexer(), sliceInf.GetIndexer()
	r.mu.Unlock()

	f.Start(ctx.Done())
	defer f.Shutdown()
	if cache.WaitForCacheSync(ctx.Done(), svcInf.HasSynced, sliceInf.HasSynced) {
		close(r.synced)
		r.log.Debug("service caches synced")
	}
	<-ctx.Done()
	return nil
}

func indexByService(obj any) ([]string, error) {
	s, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return nil, nil
	}
	name := s.Labels[discoveryv1.LabelServiceName]
	if name == "" {
		return nil, nil
	}
	return []string{s.Namespace + "/" + name}, nil
}

// WaitSynced blocks until the caches synced or ctx ends.
func (r *Resolver) WaitSynced(ctx context.Context) error {
	select {
	case <-r.synced:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%w: %w (is the Kubernetes API reachable?)", ErrNotSynced, ctx.Err())
	}
}

// Resolve returns the host:port to dial for TCP to Service port `port` of
// namespace/name.
func (r *Resolver) Resolve(ctx context.Context, namespace, name string, port int) (string, error) {
	return r.ResolveNetwork(ctx, "tcp", namespace, name, port)
}

// ResolveNetwork is Resolve for network "tcp" or "udp" (the Service port's
// protocol must match).
func (r *Resolver) ResolveNetwork(ctx context.Context, network, namespace, name string, port int) (string, error) {
	t, err := r.lookup(ctx, network, namespace, name, port)
	if err != nil {
		return "", err
	}
	if r.viaClusterIP(t) {
		return t.clusterIP, nil
	}
	if t.external != "" {
		return t.external, nil
	}
	return r.endpoint(t)
}

// target is one Service port, as far as the caches know it.
type target struct {
	ns, name  string
	svcPort   corev1.ServicePort
	clusterIP string // host:port; "" when headless
	external  string // host:port of an ExternalName Service
}

func (r *Resolver) lookup(ctx context.Context, network, namespace, name string, port int) (target, error) {
	if !r.ready.Load() {
		return target{}, ErrNotStarted
	}
	if err := r.WaitSynced(ctx); err != nil {
		return target{}, err
	}
	obj, ok, err := r.svcs.GetByKey(namespace + "/" + name)
	if err != nil || !ok {
		return target{}, fmt.Errorf("%w: %s/%s", ErrNotFound, namespace, name)
	}
	svc := obj.(*corev1.Service)
	proto := corev1.ProtocolTCP
	if network == "udp" {
		proto = corev1.ProtocolUDP
	}
	t := target{ns: namespace, name: name}
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		if svc.Spec.ExternalName == "" {
			return target{}, fmt.Errorf("%w: %s/%s is an ExternalName Service without externalName", ErrNotFound, namespace, name)
		}
		// ExternalName has no ports of its own: the requested port is used as is.
		t.external = net.JoinHostPort(svc.Spec.ExternalName, strconv.Itoa(port))
		return t, nil
	}
	found := false
	for _, p := range svc.Spec.Ports {
		pp := p.Protocol
		if pp == "" {
			pp = corev1.ProtocolTCP
		}
		if int(p.Port) == port && pp == proto {
			t.svcPort, found = p, true
			break
		}
	}
	if !found {
		return target{}, fmt.Errorf("%w: %s/%s has no %s port %d", ErrNotFound, namespace, name, proto, port)
	}
	if ip := svc.Spec.ClusterIP; ip != "" && ip != corev1.ClusterIPNone {
		t.clusterIP = net.JoinHostPort(ip, strconv.Itoa(port))
	}
	return t, nil
}

// endpoint picks a ready endpoint address on the port named like the
// Service port, round-robin.
func (r *Resolver) endpoint(t target) (string, error) {
	objs, err := r.slices.ByIndex(sliceIndex, t.ns+"/"+t.name)
	if err != nil {
		return "", fmt.Errorf("read endpoint slices of %s/%s: %w", t.ns, t.name, err)
	}
	var addrs []string
	for _, o := range objs {
		s := o.(*discoveryv1.EndpointSlice)
		if s.AddressType == discoveryv1.AddressTypeFQDN {
			continue
		}
		portNum := -1
		for _, p := range s.Ports {
			pname := ""
			if p.Name != nil {
				pname = *p.Name
			}
			proto := corev1.ProtocolTCP
			if p.Protocol != nil {
				proto = *p.Protocol
			}
			want := t.svcPort.Protocol
			if want == "" {
				want = corev1.ProtocolTCP
			}
			if pname == t.svcPort.Name && proto == want && p.Port != nil {
				portNum = int(*p.Port)
			}
		}
		if portNum < 0 {
			continue
		}
		for _, ep := range s.Endpoints {
			if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue
			}
			if len(ep.Addresses) > 0 {
				addrs = append(addrs, net.JoinHostPort(ep.Addresses[0], strconv.Itoa(portNum)))
			}
		}
	}
	if len(addrs) == 0 {
		return "", fmt.Errorf("%w: %s/%s port %d", ErrNoEndpoints, t.ns, t.name, t.svcPort.Port)
	}
	return addrs[r.rr.Add(1)%uint64(len(addrs))], nil
}

func (r *Resolver) clusterIPsUnroutable() bool {
	return r.now().UnixNano() < r.unroutable.Load()
}

// viaClusterIP reports whether t is reached at its ClusterIP: it has one,
// ClusterIPs are routable, and this one is not an address of this host.
// kube-proxy's IPVS mode binds every ClusterIP to the host's kube-ipvs0
// interface; the dial policy refuses the host's own addresses (a host
// process listening on all addresses answers there on any port the Service
// does not claim), so such a Service is reached at a ready endpoint instead,
// which the policy checks as usual. Nothing is refused, logged or counted
// for taking that route.
func (r *Resolver) viaClusterIP(t target) bool {
	if t.clusterIP == "" || r.clusterIPsUnroutable() {
		return false
	}
	ap, err := netip.ParseAddrPort(t.clusterIP)
	if err != nil {
		return true // the dial refuses or fails it with a clear error
	}
	var re *egress.RefusedError
	return !errors.As(r.policy.Check(ap.Addr()), &re) || re.Reason != egress.ReasonHost
}

// MarkClusterIPsUnroutable makes Resolve prefer endpoints for a while. Dial
// calls it when a ClusterIP cannot be reached; callers that dial by
// themselves may call it too.
func (r *Resolver) MarkClusterIPsUnroutable() {
	if !r.clusterIPsUnroutable() {
		r.log.Info("ClusterIPs are not reachable from this host; using endpoint addresses", "for", unroutableFor)
	}
	r.unroutable.Store(r.now().Add(unroutableFor).UnixNano())
}

// IsNotFound reports whether err means the Service or port does not exist
// (also true for a Kubernetes NotFound error).
func IsNotFound(err error) bool {
	return errors.Is(err, ErrNotFound) || apierrors.IsNotFound(err)
}
