package routesync

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func svc(ns, name string, typ corev1.ServiceType, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{Type: typ, Ports: ports}}
}

func port(name string, p int32) corev1.ServicePort { return corev1.ServicePort{Name: name, Port: p} }

func getter(svcs ...*corev1.Service) serviceGetter {
	return func(ns, name string) (*corev1.Service, bool) {
		for _, s := range svcs {
			if s.Namespace == ns && s.Name == name {
				return s, true
			}
		}
		return nil, false
	}
}

// ingress builds a one-rule ingress; mutate adjusts it.
func ingress(ns, host string, mutate ...func(*networkingv1.Ingress)) *networkingv1.Ingress {
	ing := &networkingv1.Ingress{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web", Labels: map[string]string{LabelManaged: "true"}},
		Spec: networkingv1.IngressSpec{Rules: []networkingv1.IngressRule{{Host: host, IngressRuleValue: networkingv1.IngressRuleValue{
			HTTP: &networkingv1.HTTPIngressRuleValue{Paths: []networkingv1.HTTPIngressPath{{
				Path: "/", Backend: networkingv1.IngressBackend{Service: &networkingv1.IngressServiceBackend{
					Name: "app", Port: networkingv1.ServiceBackendPort{Number: 8080}}}}}}}}}},
	}
	for _, m := range mutate {
		m(ing)
	}
	return ing
}

func backend(name string, p networkingv1.ServiceBackendPort) func(*networkingv1.Ingress) {
	return func(i *networkingv1.Ingress) {
		i.Spec.Rules[0].HTTP.Paths[0].Backend.Service = &networkingv1.IngressServiceBackend{Name: name, Port: p}
	}
}

func TestExtractRoutesAppliesTheManagedFilter(t *testing.T) {
	app := svc("shop", "app", corev1.ServiceTypeClusterIP, port("http", 8080))
	cases := []struct {
		name string
		ing  *networkingv1.Ingress
		svcs []*corev1.Service
		want int
	}{
		{"the managed label makes an ingress managed", ingress("shop", "a.example.com"), []*corev1.Service{app}, 1},
		{"the managed-by annotation makes an ingress managed", ingress("shop", "a.example.com", func(i *networkingv1.Ingress) {
			i.Labels = nil
			i.Annotations = map[string]string{AnnotationManagedBy: "pipeops"}
		}), []*corev1.Service{app}, 1},
		{"an ingress with neither is ignored", ingress("shop", "a.example.com", func(i *networkingv1.Ingress) { i.Labels = nil }),
			[]*corev1.Service{app}, 0},
		{"managed=false is ignored", ingress("shop", "a.example.com", func(i *networkingv1.Ingress) {
			i.Labels[LabelManaged] = "false"
		}), []*corev1.Service{app}, 0},
		{"kube-system is excluded", ingress("kube-system", "a.example.com"),
			[]*corev1.Service{svc("kube-system", "app", "", port("http", 8080))}, 0},
		{"kube-public is excluded", ingress("kube-public", "a.example.com"),
			[]*corev1.Service{svc("kube-public", "app", "", port("http", 8080))}, 0},
		{"a missing backend Service is excluded", ingress("shop", "a.example.com"), nil, 0},
		{"a LoadBalancer backend is excluded", ingress("shop", "a.example.com"),
			[]*corev1.Service{svc("shop", "app", corev1.ServiceTypeLoadBalancer, port("http", 8080))}, 0},
		{"an ExternalName backend is excluded", ingress("shop", "a.example.com"),
			[]*corev1.Service{svc("shop", "app", corev1.ServiceTypeExternalName, port("http", 8080))}, 0},
		{"default/kubernetes is excluded", ingress("default", "a.example.com", backend("kubernetes", networkingv1.ServiceBackendPort{Number: 443})),
			[]*corev1.Service{svc("default", "kubernetes", "", port("https", 443))}, 0},
		{"a named port resolves through the Service", ingress("shop", "a.example.com", backend("app", networkingv1.ServiceBackendPort{Name: "http"})),
			[]*corev1.Service{app}, 1},
		{"a named port the Service lacks is excluded", ingress("shop", "a.example.com", backend("app", networkingv1.ServiceBackendPort{Name: "grpc"})),
			[]*corev1.Service{app}, 0},
		{"a port number the Service lacks is excluded", ingress("shop", "a.example.com", backend("app", networkingv1.ServiceBackendPort{Number: 9})),
			[]*corev1.Service{app}, 0},
		{"a rule without a host gives no route", ingress("shop", ""), []*corev1.Service{app}, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := extractRoutes(c.ing, getter(c.svcs...)); len(got) != c.want {
				t.Fatalf("got %d routes; want %d", len(got), c.want)
			}
		})
	}
}

func TestExtractRoutesFillsTheRouteFields(t *testing.T) {
	app := svc("shop", "app", "", port("http", 8080))
	exact := networkingv1.PathTypeExact
	cases := []struct {
		name string
		ing  *networkingv1.Ingress
		want route
	}{
		{"defaults: path / and path type Prefix, name from the host's first label",
			ingress("shop", "Shop.Example.com", func(i *networkingv1.Ingress) { i.Spec.Rules[0].HTTP.Paths[0].Path = "" }),
			route{Host: "shop.example.com", Path: "/", PathType: "Prefix", DeploymentName: "shop"}},
		{"tls and an explicit path type",
			ingress("shop", "a.example.com", func(i *networkingv1.Ingress) {
				i.Spec.TLS = []networkingv1.IngressTLS{{Hosts: []string{"a.example.com"}}}
				i.Spec.Rules[0].HTTP.Paths[0].PathType = &exact
				i.Spec.Rules[0].HTTP.Paths[0].Path = "/api"
			}),
			route{Host: "a.example.com", Path: "/api", PathType: "Exact", TLS: true, DeploymentName: "a"}},
		{"deployment id and name annotations win",
			ingress("shop", "a.example.com", func(i *networkingv1.Ingress) {
				i.Annotations = map[string]string{AnnotationDeploymentID: "dep-1", AnnotationDeployment: "web",
					AnnotationOwner: "alice", AnnotationEnvironment: "prod"}
			}),
			route{Host: "a.example.com", Path: "/", PathType: "Prefix", DeploymentID: "dep-1", DeploymentName: "web"}},
		{"without them: environment:owner and the owner",
			ingress("shop", "a.example.com", func(i *networkingv1.Ingress) {
				i.Annotations = map[string]string{AnnotationOwner: "alice", AnnotationEnvironment: "prod"}
			}),
			route{Host: "a.example.com", Path: "/", PathType: "Prefix", DeploymentID: "prod:alice", DeploymentName: "alice"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := extractRoutes(c.ing, getter(app))
			if len(got) != 1 {
				t.Fatalf("got %d routes; want 1", len(got))
			}
			g := got[0]
			if g.Host != c.want.Host || g.Path != c.want.Path || g.PathType != c.want.PathType || g.TLS != c.want.TLS ||
				g.DeploymentID != c.want.DeploymentID || g.DeploymentName != c.want.DeploymentName {
				t.Fatalf("got %+v; want %+v", g, c.want)
			}
			if g.Ingress != "shop/web" || g.IngressName != "web" || g.Namespace != "shop" {
				t.Fatalf("ingress identity = %q %q %q", g.Ingress, g.Namespace, g.IngressName)
			}
		})
	}
}

func TestAFingerprintChangesOnlyWithTheRoute(t *testing.T) {
	app := svc("shop", "app", "", port("http", 8080))
	a := extractRoutes(ingress("shop", "a.example.com"), getter(app))[0]
	same := extractRoutes(ingress("shop", "a.example.com", func(i *networkingv1.Ingress) {
		i.ResourceVersion = "99"
		i.Annotations = map[string]string{annotationLastApplied: "{...}"}
	}), getter(app))[0]
	if a.fp != same.fp {
		t.Fatalf("a new resourceVersion or last-applied annotation changed the fingerprint:\n%s\n%s", a.fp, same.fp)
	}
	tls := extractRoutes(ingress("shop", "a.example.com", func(i *networkingv1.Ingress) {
		i.Spec.TLS = []networkingv1.IngressTLS{{}}
	}), getter(app))[0]
	if a.fp == tls.fp {
		t.Fatal("adding TLS did not change the fingerprint")
	}
}
