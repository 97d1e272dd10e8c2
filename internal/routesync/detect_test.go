package routesync

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// svcSet is an in-memory serviceLister for detection tables.
type svcSet []*corev1.Service

func (s svcSet) get(ns, name string) (*corev1.Service, bool) { return getter(s...)(ns, name) }

func (s svcSet) list(ns string, sel labels.Selector) []*corev1.Service {
	var out []*corev1.Service
	for _, v := range s {
		if v.Namespace == ns && sel.Matches(labels.Set(v.Labels)) {
			out = append(out, v)
		}
	}
	return out
}

func labelled(s *corev1.Service, kv ...string) *corev1.Service {
	s.Labels = map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		s.Labels[kv[i]] = kv[i+1]
	}
	return s
}

func TestDetectControllerFollowsTheSpecOrder(t *testing.T) {
	web := port("web", 8000)
	cases := []struct {
		name string
		svcs svcSet
		want string
	}{
		{"nothing found", nil, ""},
		{"pipeops-system/traefik wins over ingress-nginx", svcSet{
			svc("ingress-nginx", "ingress-nginx-controller", "", port("http", 80)),
			svc("pipeops-system", "traefik", "", web),
		}, "pipeops-system/traefik:8000 (traefik)"},
		{"ingress-nginx before rke2", svcSet{
			svc("kube-system", "rke2-ingress-nginx-controller", "", port("http", 80)),
			svc("ingress-nginx", "ingress-nginx-controller", "", port("http", 80)),
		}, "ingress-nginx/ingress-nginx-controller:80 (nginx)"},
		{"rke2 before kube-system/traefik", svcSet{
			svc("kube-system", "traefik", "", port("web", 80)),
			svc("kube-system", "rke2-ingress-nginx-controller", "", port("http", 80)),
		}, "kube-system/rke2-ingress-nginx-controller:80 (nginx)"},
		{"traefik/traefik last of the names", svcSet{svc("traefik", "traefik", "", port("web", 80))}, "traefik/traefik:80 (traefik)"},
		{"label search in kube-system", svcSet{
			labelled(svc("kube-system", "my-proxy", "", port("http", 80)), "app.kubernetes.io/name", "traefik"),
		}, "kube-system/my-proxy:80 (traefik)"},
		{"label search: k8s-app=traefik-ingress-lb", svcSet{
			labelled(svc("default", "lb", "", port("http", 80)), "k8s-app", "traefik-ingress-lb"),
		}, "default/lb:80 (traefik)"},
		{"label search ignores other namespaces", svcSet{
			labelled(svc("apps", "my-proxy", "", port("http", 80)), "app.kubernetes.io/name", "traefik"),
		}, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := detectController(c.svcs, DefaultControllerCandidates, DefaultLabelNamespaces)
			if got.String() != c.want {
				t.Fatalf("got %q; want %q", got.String(), c.want)
			}
		})
	}
}

func TestControllerPortPrefersHTTPThenHTTPS(t *testing.T) {
	cases := []struct {
		name  string
		ports []corev1.ServicePort
		want  int32
	}{
		{"a port named web", []corev1.ServicePort{port("websecure", 8443), port("web", 8000)}, 8000},
		{"a port named http", []corev1.ServicePort{port("metrics", 9100), port("http", 8080)}, 8080},
		{"port 80 without a name", []corev1.ServicePort{port("", 443), port("", 80)}, 80},
		{"https when no http port exists", []corev1.ServicePort{port("metrics", 9100), port("https", 8443)}, 8443},
		{"443 when no named port exists", []corev1.ServicePort{port("", 443)}, 443},
		{"the first port otherwise", []corev1.ServicePort{port("x", 9000), port("y", 9001)}, 9000},
		{"80 when the Service has no ports", nil, 80},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := controllerPort(svc("a", "b", "", c.ports...)); got != c.want {
				t.Fatalf("got %d; want %d", got, c.want)
			}
		})
	}
}

func TestRoutingModeIsDirectOnlyForAPublicLoadBalancer(t *testing.T) {
	lb := func(ports []corev1.ServicePort, ingress ...corev1.LoadBalancerIngress) svcSet {
		s := svc("pipeops-system", "traefik", corev1.ServiceTypeLoadBalancer, ports...)
		s.Status.LoadBalancer.Ingress = ingress
		return svcSet{s}
	}
	both := []corev1.ServicePort{port("web", 80), port("websecure", 443)}
	cases := []struct {
		name     string
		svcs     svcSet
		force    bool
		mode     string
		endpoint string
	}{
		{"no controller Service", nil, false, "tunnel", ""},
		{"a ClusterIP Service", svcSet{svc("pipeops-system", "traefik", corev1.ServiceTypeClusterIP, both...)}, false, "tunnel", ""},
		{"a LoadBalancer without an address yet", lb(both), false, "tunnel", ""},
		{"an RFC 1918 address", lb(both, corev1.LoadBalancerIngress{IP: "10.1.2.3"}), false, "tunnel", ""},
		{"a 192.168 address", lb(both, corev1.LoadBalancerIngress{IP: "192.168.1.10"}), false, "tunnel", ""},
		{"a CGNAT address", lb(both, corev1.LoadBalancerIngress{IP: "100.64.0.9"}), false, "tunnel", ""},
		{"a public IP with https", lb(both, corev1.LoadBalancerIngress{IP: "203.0.113.10"}), false, "direct", "203.0.113.10:443"},
		{"a public IP with only http", lb([]corev1.ServicePort{port("web", 80)}, corev1.LoadBalancerIngress{IP: "203.0.113.10"}),
			false, "direct", "203.0.113.10:80"},
		{"a public IP with another port", lb([]corev1.ServicePort{port("x", 8080)}, corev1.LoadBalancerIngress{IP: "203.0.113.10"}),
			false, "direct", "203.0.113.10:8080"},
		{"a public IPv6 address", lb(both, corev1.LoadBalancerIngress{IP: "2001:db8::1"}), false, "direct", "[2001:db8::1]:443"},
		{"a hostname", lb(both, corev1.LoadBalancerIngress{Hostname: "lb.example.net"}), false, "direct", "lb.example.net:443"},
		{"a private address first, a public one second",
			lb(both, corev1.LoadBalancerIngress{IP: "10.0.0.1"}, corev1.LoadBalancerIngress{IP: "198.51.100.7"}), false, "direct", "198.51.100.7:443"},
		{"forced tunnel mode ignores a public address", lb(both, corev1.LoadBalancerIngress{IP: "203.0.113.10"}), true, "tunnel", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := detectRouting(c.svcs, DefaultRoutingCandidates, c.force)
			if got.Mode != c.mode || got.PublicEndpoint != c.endpoint || got.Private != (c.mode == "tunnel") {
				t.Fatalf("got %+v; want mode %s endpoint %q", got, c.mode, c.endpoint)
			}
		})
	}
}
