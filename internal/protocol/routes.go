package protocol

// Route registration REST API (protocol.md §9.1). The agent POSTs these
// bodies to <api_url>/api/v1/gateway/routes/{register,sync,unregister} with
// the Bearer token; success is HTTP 200 only. Per §15.1 the cluster_uuid
// field of route bodies carries the cluster_id.
const (
	PathRoutesRegister   = "/api/v1/gateway/routes/register"
	PathRoutesSync       = "/api/v1/gateway/routes/sync"
	PathRoutesUnregister = "/api/v1/gateway/routes/unregister"
)

// Routing modes (§9.3).
const (
	RoutingTunnel = "tunnel"
	RoutingDirect = "direct"
)

// Ingress controller types in a sync body.
const (
	ControllerTraefik = "traefik"
	ControllerNginx   = "nginx"
	ControllerUnknown = "unknown"
)

// RouteRegister is the body of POST …/routes/register: one (host, path) of a
// managed ingress. Namespace, ServiceName and ServicePort name the ingress
// controller's Service, not the application's.
type RouteRegister struct {
	Hostname       string            `json:"hostname"`
	ClusterUUID    string            `json:"cluster_uuid"`
	Namespace      string            `json:"namespace"`
	ServiceName    string            `json:"service_name"`
	ServicePort    int32             `json:"service_port"`
	IngressName    string            `json:"ingress_name"`
	Path           string            `json:"path"`
	PathType       string            `json:"path_type"`
	TLS            bool              `json:"tls"`
	Annotations    map[string]string `json:"annotations,omitempty"`
	PublicEndpoint string            `json:"public_endpoint,omitempty"`
	RoutingMode    string            `json:"routing_mode,omitempty"`
	DeploymentID   string            `json:"deployment_id,omitempty"`
	DeploymentName string            `json:"deployment_name,omitempty"`
}

// RouteSync is the body of POST …/routes/sync: the full set of the cluster's
// routes. An empty Ingresses list clears the cluster's routes (§9.2).
type RouteSync struct {
	ClusterUUID       string             `json:"cluster_uuid"`
	PublicEndpoint    string             `json:"public_endpoint,omitempty"`
	RoutingMode       string             `json:"routing_mode,omitempty"`
	IngressController *IngressController `json:"ingress_controller,omitempty"`
	Ingresses         []SyncIngress      `json:"ingresses"`
}

// IngressController names the controller Service that routes target.
type IngressController struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
	Port      int32  `json:"port"`
	Type      string `json:"type"`
}

// SyncIngress is one ingress in a sync body.
type SyncIngress struct {
	Namespace   string            `json:"namespace"`
	IngressName string            `json:"ingress_name"`
	Annotations map[string]string `json:"annotations"`
	Rules       []SyncRule        `json:"rules"`
}

// SyncRule is one host of a SyncIngress.
type SyncRule struct {
	Host  string     `json:"host"`
	TLS   bool       `json:"tls"`
	Paths []SyncPath `json:"paths"`
}

// SyncPath is one path of a SyncRule; the service is the controller's.
type SyncPath struct {
	Path        string `json:"path"`
	PathType    string `json:"path_type"`
	ServiceName string `json:"service_name"`
	ServicePort int32  `json:"service_port"`
}

// RouteUnregister is the body of POST …/routes/unregister, sent once per host
// when its last route goes away. It carries no cluster id.
type RouteUnregister struct {
	Hostname string `json:"hostname"`
}
