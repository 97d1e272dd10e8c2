package routesync

import (
	"encoding/json"
	"maps"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
)

// Labels and annotations of protocol.md §9.
const (
	LabelManaged            = "pipeops.io/managed"
	AnnotationManagedBy     = "pipeops.io/managed-by"
	AnnotationDeploymentID  = "pipeops.io/deployment-id"
	AnnotationDeployment    = "pipeops.io/deployment-name"
	AnnotationEnvironment   = "pipeops.io/environment"
	AnnotationOwner         = "pipeops.io/owner"
	annotationLastApplied   = "kubectl.kubernetes.io/last-applied-configuration"
	defaultPathType         = string(networkingv1.PathTypePrefix)
	managedLabelValue       = "true"
	managedByAnnotationName = "pipeops"
)

// excludedNamespaces never hold managed ingresses (§9.3).
var excludedNamespaces = map[string]bool{"kube-system": true, "kube-public": true, "kube-node-lease": true}

// serviceGetter finds a Service in the informer cache.
type serviceGetter func(namespace, name string) (*corev1.Service, bool)

// route is one (host, path) of a managed ingress, the unit of a register call.
// Its target (the ingress controller) and routing mode are global and are
// added when a body is built.
type route struct {
	Ingress        string            `json:"-"` // namespace/name
	Namespace      string            `json:"namespace"`
	IngressName    string            `json:"ingress_name"`
	Host           string            `json:"host"`
	Path           string            `json:"path"`
	PathType       string            `json:"path_type"`
	TLS            bool              `json:"tls"`
	Annotations    map[string]string `json:"annotations,omitempty"`
	DeploymentID   string            `json:"deployment_id,omitempty"`
	DeploymentName string            `json:"deployment_name,omitempty"`

	fp string // fingerprint of everything above: equal fp ⇒ nothing to re-register
}

// id names a route within its host: two routes of one host differ by ingress or path.
func (r route) id() string { return r.Ingress + "\x00" + r.Path }

// isManaged applies the label/annotation half of the filter (§9.3).
func isManaged(ing *networkingv1.Ingress) bool {
	if ing == nil || excludedNamespaces[ing.Namespace] {
		return false
	}
	return ing.Labels[LabelManaged] == managedLabelValue || ing.Annotations[AnnotationManagedBy] == managedByAnnotationName
}

// extractRoutes returns the routes of a managed ingress, in spec order; nil
// for an unmanaged one. A path whose backend Service is missing, is
// default/kubernetes, is of type LoadBalancer or ExternalName, or names a port
// the Service does not have, is left out (§9.3).
func extractRoutes(ing *networkingv1.Ingress, svc serviceGetter) []route {
	if !isManaged(ing) {
		return nil
	}
	key := ing.Namespace + "/" + ing.Name
	tls := len(ing.Spec.TLS) > 0
	ann := routeAnnotations(ing.Annotations)
	var out []route
	seen := map[string]bool{}
	for _, rule := range ing.Spec.Rules {
		host := strings.ToLower(strings.TrimSpace(rule.Host))
		if host == "" || rule.HTTP == nil {
			continue // a route needs a hostname
		}
		for _, p := range rule.HTTP.Paths {
			if !backendOK(ing.Namespace, p.Backend, svc) {
				continue
			}
			path := p.Path
			if path == "" {
				path = "/"
			}
			pt := defaultPathType
			if p.PathType != nil && *p.PathType != "" {
				pt = string(*p.PathType)
			}
			if seen[host+"\x00"+path] {
				continue
			}
			seen[host+"\x00"+path] = true
			r := route{
				Ingress: key, Namespace: ing.Namespace, IngressName: ing.Name, Host: host, Path: path, PathType: pt,
				TLS: tls, Annotations: ann, DeploymentID: deploymentID(ing.Annotations),
				DeploymentName: deploymentName(ing.Annotations, host),
			}
			b, _ := json.Marshal(r) // maps marshal with sorted keys: a stable fingerprint
			r.fp = string(b)
			out = append(out, r)
		}
	}
	return out
}

// backendOK checks the backend half of the filter and resolves named ports.
func backendOK(ns string, b networkingv1.IngressBackend, svc serviceGetter) bool {
	if b.Service == nil || b.Service.Name == "" {
		return false
	}
	if ns == "default" && b.Service.Name == "kubernetes" {
		return false
	}
	s, ok := svc(ns, b.Service.Name)
	if !ok || s.Spec.Type == corev1.ServiceTypeLoadBalancer || s.Spec.Type == corev1.ServiceTypeExternalName {
		return false
	}
	return resolvePort(s, b.Service.Port) > 0
}

// resolvePort returns the Service port an ingress backend names, by number or
// by name; 0 when the Service has no such port.
func resolvePort(s *corev1.Service, p networkingv1.ServiceBackendPort) int32 {
	for _, sp := range s.Spec.Ports {
		if (p.Name != "" && sp.Name == p.Name) || (p.Name == "" && p.Number != 0 && sp.Port == p.Number) {
			return sp.Port
		}
	}
	return 0
}

// routeAnnotations copies the ingress annotations, minus kubectl's
// last-applied copy of the whole object (large, and not route data).
func routeAnnotations(in map[string]string) map[string]string {
	out := maps.Clone(in)
	delete(out, annotationLastApplied)
	if len(out) == 0 {
		return nil
	}
	return out
}

// deploymentID is pipeops.io/deployment-id, else "<environment>:<owner>".
func deploymentID(a map[string]string) string {
	if v := a[AnnotationDeploymentID]; v != "" {
		return v
	}
	if env, owner := a[AnnotationEnvironment], a[AnnotationOwner]; env != "" && owner != "" {
		return env + ":" + owner
	}
	return ""
}

// deploymentName is pipeops.io/deployment-name, else pipeops.io/owner, else
// the host's first DNS label.
func deploymentName(a map[string]string, host string) string {
	if v := a[AnnotationDeployment]; v != "" {
		return v
	}
	if v := a[AnnotationOwner]; v != "" {
		return v
	}
	label, _, _ := strings.Cut(host, ".")
	return label
}

// backendServices lists the namespace/name of every Service an ingress's
// paths point at; the informer indexes ingresses by it, so a Service change
// re-evaluates exactly the ingresses that use it.
func backendServices(ing *networkingv1.Ingress) []string {
	var out []string
	seen := map[string]bool{}
	add := func(b *networkingv1.IngressBackend) {
		if b == nil || b.Service == nil || b.Service.Name == "" {
			return
		}
		k := ing.Namespace + "/" + b.Service.Name
		if !seen[k] {
			seen[k] = true
			out = append(out, k)
		}
	}
	add(ing.Spec.DefaultBackend)
	for _, r := range ing.Spec.Rules {
		if r.HTTP == nil {
			continue
		}
		for i := range r.HTTP.Paths {
			add(&r.HTTP.Paths[i].Backend)
		}
	}
	return out
}
