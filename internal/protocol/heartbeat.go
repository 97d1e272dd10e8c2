package protocol

// Heartbeat statuses (§4.2).
const (
	StatusHealthy      = "healthy"
	StatusReconnecting = "reconnecting"
	StatusDisconnected = "disconnected"
)

// Heartbeat is the payload of `heartbeat` (protocol.md §4.2). Subsystems
// fill their parts through heartbeat contributors registered with the
// control-plane client (routes: GatewayRoutes and IsPrivate; the monitoring
// stack: the prometheus_/loki_/grafana_ fields).
type Heartbeat struct {
	ClusterID    string            `json:"cluster_id"`
	AgentID      string            `json:"agent_id"`
	Status       string            `json:"status"`
	TunnelStatus string            `json:"tunnel_status"`
	Metadata     HeartbeatMetadata `json:"metadata"`

	PrometheusURL      string `json:"prometheus_url,omitempty"`
	PrometheusUsername string `json:"prometheus_username,omitempty"`
	PrometheusPassword string `json:"prometheus_password,omitempty"`
	PrometheusSSL      *bool  `json:"prometheus_ssl,omitempty"`
	LokiURL            string `json:"loki_url,omitempty"`
	LokiUsername       string `json:"loki_username,omitempty"`
	LokiPassword       string `json:"loki_password,omitempty"`
	LokiSSL            *bool  `json:"loki_ssl,omitempty"`
	GrafanaURL         string `json:"grafana_url,omitempty"`
	GrafanaUsername    string `json:"grafana_username,omitempty"`
	GrafanaPassword    string `json:"grafana_password,omitempty"`
	GrafanaSSL         *bool  `json:"grafana_ssl,omitempty"`

	WorkerJoin *WorkerJoin `json:"worker_join,omitempty"`
}

// HeartbeatMetadata is heartbeat.metadata.
type HeartbeatMetadata struct {
	AgentVersion string `json:"agent_version"`
	K8sVersion   string `json:"k8s_version"`
	K8sNodes     int    `json:"k8s_nodes"`
	K8sPods      int    `json:"k8s_pods"`
	CPUUsage     string `json:"cpu_usage"`
	MemoryUsage  string `json:"memory_usage"`
	// Where CPU and memory came from is local status only (apitype.KubeStatus):
	// §4.2 names the metadata keys, and a message carries no others.
	IsPrivate     bool `json:"is_private"`
	GatewayRoutes int  `json:"gateway_routes"`
}

// WorkerJoin is heartbeat.worker_join on k3s servers (§4.2). Its token is a
// secret: never log a Heartbeat that carries one.
type WorkerJoin struct {
	Provider    string            `json:"provider"`
	ServerURL   string            `json:"server_url"`
	Env         map[string]string `json:"env"`
	Commands    []string          `json:"commands"`
	GeneratedAt string            `json:"generated_at"`
}
