package routesync

import (
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"

	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
)

// DefaultControllerCandidates is the detection order of §9.3, steps 1–5.
var DefaultControllerCandidates = []types.NamespacedName{
	{Namespace: "pipeops-system", Name: "traefik"},
	{Namespace: "ingress-nginx", Name: "ingress-nginx-controller"},
	{Namespace: "kube-system", Name: "rke2-ingress-nginx-controller"},
	{Namespace: "kube-system", Name: "traefik"},
	{Namespace: "traefik", Name: "traefik"},
}

// DefaultLabelNamespaces are searched by label in step 6 of §9.3.
var DefaultLabelNamespaces = []string{"kube-system", "traefik", "ingress-nginx", "default"}

// DefaultRoutingCandidates decide the routing mode (§9.3), in this order.
var DefaultRoutingCandidates = []types.NamespacedName{
	{Namespace: "pipeops-system", Name: "traefik"},
	{Namespace: "ingress-nginx", Name: "ingress-nginx-controller"},
	{Namespace: "kube-system", Name: "traefik"},
	{Namespace: "traefik", Name: "traefik"},
	{Namespace: "kube-system", Name: "rke2-ingress-nginx-controller"},
}

// controllerSelectors are the label searches of step 6.
var controllerSelectors = []labels.Set{
	{"app.kubernetes.io/name": "traefik"},
	{"app.kubernetes.io/name": "ingress-nginx"},
	{"k8s-app": "traefik-ingress-lb"},
}

// controller is the detected ingress controller's Service: every route targets it.
type controller struct {
	Namespace, Name, Type string
	Port                  int32
}

func (c controller) found() bool { return c.Name != "" }

func (c controller) String() string {
	if !c.found() {
		return ""
	}
	return c.Namespace + "/" + c.Name + ":" + strconv.Itoa(int(c.Port)) + " (" + c.Type + ")"
}

// serviceLister is what detection needs from the Service informer.
type serviceLister interface {
	get(namespace, name string) (*corev1.Service, bool)
	list(namespace string, sel labels.Selector) []*corev1.Service
}

// detectController applies the detection order of §9.3 to the cache.
func detectController(svcs serviceLister, cands []types.NamespacedName, labelNS []string) controller {
	for _, c := range cands {
		if s, ok := svcs.get(c.Namespace, c.Name); ok {
			return controllerOf(s)
		}
	}
	for _, ns := range labelNS {
		for _, sel := range controllerSelectors {
			found := svcs.list(ns, sel.AsSelector())
			if len(found) == 0 {
				continue
			}
			slices.SortFunc(found, func(a, b *corev1.Service) int { return strings.Compare(a.Name, b.Name) })
			return controllerOf(found[0])
		}
	}
	return controller{}
}

func controllerOf(s *corev1.Service) controller {
	return controller{Namespace: s.Namespace, Name: s.Name, Type: controllerType(s), Port: controllerPort(s)}
}

// controllerType is traefik, nginx or unknown, from labels then the name.
func controllerType(s *corev1.Service) string {
	name := s.Labels["app.kubernetes.io/name"] + " " + s.Labels["k8s-app"] + " " + s.Name
	switch {
	case strings.Contains(name, "traefik"):
		return protocol.ControllerTraefik
	case strings.Contains(name, "nginx"):
		return protocol.ControllerNginx
	}
	return protocol.ControllerUnknown
}

// controllerPort is the first port named http or web, else 80; failing that
// https, websecure or 443; else the first port (§9.3).
func controllerPort(s *corev1.Service) int32 {
	pick := func(names []string, number int32) int32 {
		for _, p := range s.Spec.Ports {
			if slices.Contains(names, p.Name) {
				return p.Port
			}
		}
		for _, p := range s.Spec.Ports {
			if p.Port == number {
				return p.Port
			}
		}
		return 0
	}
	if p := pick([]string{"http", "web"}, 80); p != 0 {
		return p
	}
	if p := pick([]string{"https", "websecure"}, 443); p != 0 {
		return p
	}
	if len(s.Spec.Ports) > 0 {
		return s.Spec.Ports[0].Port
	}
	return 80
}

// routing is the cluster's routing mode (§9.3).
type routing struct {
	Mode           string // protocol.RoutingTunnel or RoutingDirect
	PublicEndpoint string
	Private        bool
}

// detectRouting decides the routing mode from the first candidate Service
// that exists. Forced tunnel mode skips detection.
func detectRouting(svcs serviceLister, cands []types.NamespacedName, forceTunnel bool) routing {
	private := routing{Mode: protocol.RoutingTunnel, Private: true}
	if forceTunnel {
		return private
	}
	for _, c := range cands {
		s, ok := svcs.get(c.Namespace, c.Name)
		if !ok {
			continue
		}
		addr := publicAddress(s)
		if addr == "" {
			return private
		}
		return routing{Mode: protocol.RoutingDirect, PublicEndpoint: net.JoinHostPort(addr, strconv.Itoa(int(endpointPort(s)))), Private: false}
	}
	return private
}

// publicAddress is the first public address of a LoadBalancer Service: a
// hostname, or an IP outside the private and non-routable ranges.
func publicAddress(s *corev1.Service) string {
	if s.Spec.Type != corev1.ServiceTypeLoadBalancer {
		return ""
	}
	for _, in := range s.Status.LoadBalancer.Ingress {
		if in.IP != "" {
			if ip, err := netip.ParseAddr(in.IP); err == nil && isPublicIP(ip) {
				return ip.String()
			}
			continue
		}
		if in.Hostname != "" {
			return in.Hostname
		}
	}
	return ""
}

// cgnat is RFC 6598 shared address space: carrier-grade NAT, not reachable from outside.
var cgnat = netip.MustParsePrefix("100.64.0.0/10")

// isPublicIP rejects RFC 1918 (and IPv6 ULA), loopback, link-local,
// unspecified, multicast and CGNAT addresses. The spec names RFC 1918; the
// other ranges are no more reachable from the internet, so they count as private too.
func isPublicIP(ip netip.Addr) bool {
	ip = ip.Unmap()
	return ip.IsValid() && !ip.IsPrivate() && !ip.IsLoopback() && !ip.IsLinkLocalUnicast() && !ip.IsLinkLocalMulticast() &&
		!ip.IsUnspecified() && !ip.IsMulticast() && !cgnat.Contains(ip)
}

// endpointPort is 443 when an https/websecure/443 port exists, else 80 when
// an http/web/80 port exists, else the first port (§9.3).
func endpointPort(s *corev1.Service) int32 {
	has := func(names []string, number int32) bool {
		return slices.ContainsFunc(s.Spec.Ports, func(p corev1.ServicePort) bool {
			return p.Port == number || slices.Contains(names, p.Name)
		})
	}
	switch {
	case has([]string{"https", "websecure"}, 443):
		return 443
	case has([]string{"http", "web"}, 80):
		return 80
	case len(s.Spec.Ports) > 0:
		return s.Spec.Ports[0].Port
	}
	return 443
}
