package protocol

import "github.com/pipeops/pipeops-vm-agent/internal/hostinfo"

// Register is the payload of `register` (protocol.md §4.1).
type Register struct {
	AgentID          string            `json:"agent_id"`
	Name             string            `json:"name"`
	K8sVersion       string            `json:"k8s_version"`
	Hostname         string            `json:"hostname"`
	AgentVersion     string            `json:"agent_version"`
	ServerIP         string            `json:"server_ip"`
	Region           string            `json:"region"`
	CloudProvider    string            `json:"cloud_provider"`
	TunnelPortConfig TunnelPortConfig  `json:"tunnel_port_config"`
	Labels           map[string]string `json:"labels"`
	ServerSpecs      hostinfo.Specs    `json:"server_specs"`
	Features         Features          `json:"features"`
	Metadata         map[string]string `json:"metadata"`
	ClusterID        string            `json:"cluster_id,omitempty"`
	K8sServiceToken  string            `json:"k8s_service_token,omitempty"`
}

// TunnelPortConfig is register.tunnel_port_config.
type TunnelPortConfig struct {
	KubernetesAPI int `json:"kubernetes_api"`
	Kubelet       int `json:"kubelet"`
	AgentHTTP     int `json:"agent_http"`
}

// Features is register.features; the agent sends every flag true.
type Features struct {
	SupportsStreaming         bool `json:"supports_streaming"`
	SupportsBinaryProtocol    bool `json:"supports_binary_protocol"`
	SupportsCompression       bool `json:"supports_compression"`
	SupportsWebSocketProxy    bool `json:"supports_websocket_proxy"`
	SupportsGateway           bool `json:"supports_gateway"`
	SupportsResponseStreaming bool `json:"supports_response_streaming"`
}

// AllFeatures is what this agent supports.
var AllFeatures = Features{true, true, true, true, true, true}

// RegisterSuccess is the payload of `register_success` (§5.1).
type RegisterSuccess struct {
	ClusterID    string `json:"cluster_id"`
	ClusterUUID  string `json:"cluster_uuid,omitempty"`
	Name         string `json:"name,omitempty"`
	Status       string `json:"status,omitempty"`
	TunnelURL    string `json:"tunnel_url,omitempty"`
	APIServer    string `json:"api_server,omitempty"`
	Token        string `json:"token,omitempty"`
	WorkspaceID  any    `json:"workspace_id,omitempty"` // a number on the wire; kept opaque
	GatewayWSURL string `json:"gateway_ws_url,omitempty"`
}

// ErrorPayload is the payload of `error` and of `proxy_error`.
type ErrorPayload struct {
	Error     string `json:"error"`
	RequestID string `json:"request_id,omitempty"`
}
