package routesync

import (
	"encoding/json"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
)

// FuzzExtractRoutes feeds arbitrary Ingress objects (as the API would
// decode them) and backend Services to the route extraction: it must never
// panic, an unmanaged or system-namespace Ingress yields nothing, and every
// route it yields is registrable: a trimmed lower-case host, a path and
// path type, unique per host and path, the Ingress's own namespace, a
// backend Service of a routable type with the named port, no kubectl
// last-applied annotation, and a fingerprint that is the route's JSON.
// Corpus: testdata/fuzz/FuzzExtractRoutes. CI runs it by count (scripts/test.sh).
func FuzzExtractRoutes(f *testing.F) {
	managed := `{"metadata":{"name":"shop","namespace":"web","labels":{"pipeops.io/managed":"true"},` +
		`"annotations":{"pipeops.io/owner":"ann","kubectl.kubernetes.io/last-applied-configuration":"{}"}},` +
		`"spec":{"tls":[{"hosts":["Shop.Example.com"]}],"rules":[{"host":" Shop.Example.com ","http":{"paths":[` +
		`{"path":"/","pathType":"Prefix","backend":{"service":{"name":"app","port":{"number":80}}}},` +
		`{"path":"/api","backend":{"service":{"name":"app","port":{"name":"http"}}}},` +
		`{"path":"/","backend":{"service":{"name":"app","port":{"number":80}}}}]}}]}}`
	svc := `{"metadata":{"name":"app","namespace":"web"},"spec":{"ports":[{"name":"http","port":80}]}}`
	f.Add([]byte(managed), []byte(svc))
	f.Add([]byte(strings.Replace(managed, `"labels":{"pipeops.io/managed":"true"}`, `"labels":{}`, 1)), []byte(svc))
	f.Add([]byte(strings.Replace(managed, `"namespace":"web"`, `"namespace":"kube-system"`, 1)), []byte(svc))
	f.Add([]byte(managed), []byte(`{"metadata":{"name":"app","namespace":"web"},"spec":{"type":"ExternalName","externalName":"localhost"}}`))
	f.Add([]byte(`{"metadata":{"name":"x","namespace":"default","annotations":{"pipeops.io/managed-by":"pipeops"}},"spec":{"defaultBackend":{"service":{"name":"kubernetes"}},"rules":[{"host":"a","http":{"paths":[{"backend":{"service":{"name":"kubernetes","port":{"number":443}}}}]}}]}}`), []byte(svc))
	f.Add([]byte(`{"spec":{"rules":[{"http":null},{"host":""}]}}`), []byte(`{}`))
	f.Fuzz(func(t *testing.T, ingJSON, svcJSON []byte) {
		var ing networkingv1.Ingress
		if json.Unmarshal(ingJSON, &ing) != nil {
			return
		}
		var s corev1.Service
		haveSvc := json.Unmarshal(svcJSON, &s) == nil
		get := func(ns, name string) (*corev1.Service, bool) {
			if haveSvc && s.Namespace == ns && s.Name == name {
				return &s, true
			}
			return nil, false
		}
		for _, k := range backendServices(&ing) {
			if !strings.HasPrefix(k, ing.Namespace+"/") {
				t.Fatalf("backend %q outside the Ingress's namespace %q", k, ing.Namespace)
			}
		}
		routes := extractRoutes(&ing, get)
		if len(routes) > 0 && (!isManaged(&ing) || excludedNamespaces[ing.Namespace]) {
			t.Fatalf("%d routes from an unmanaged or system Ingress", len(routes))
		}
		seen := map[string]bool{}
		for _, r := range routes {
			if r.Host == "" || r.Host != strings.ToLower(strings.TrimSpace(r.Host)) || r.Path == "" || r.PathType == "" {
				t.Fatalf("route %+v is not registrable", r)
			}
			if seen[r.Host+"\x00"+r.Path] {
				t.Fatalf("route %s%s twice", r.Host, r.Path)
			}
			seen[r.Host+"\x00"+r.Path] = true
			if r.Namespace != ing.Namespace || r.Ingress != ing.Namespace+"/"+ing.Name {
				t.Fatalf("route %+v names another object", r)
			}
			if _, ok := r.Annotations[annotationLastApplied]; ok {
				t.Fatal("the last-applied annotation was kept")
			}
			if s.Spec.Type == corev1.ServiceTypeExternalName || s.Spec.Type == corev1.ServiceTypeLoadBalancer {
				t.Fatalf("a route to a %s Service", s.Spec.Type)
			}
			var back route
			if err := json.Unmarshal([]byte(r.fp), &back); err != nil || back.Host != r.Host || back.Path != r.Path {
				t.Fatalf("fingerprint %q is not the route's JSON: %v", r.fp, err)
			}
		}
	})
}
