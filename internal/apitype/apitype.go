// Package apitype holds the wire types of the local API that pipeopsctl
// speaks to the agent over its unix socket. Both sides import it, so it uses
// the standard library only.
package apitype

import "time"

// APIVersion is the path prefix of every local API route.
const APIVersion = "v1"

// VersionHeader carries each side's build version; the CLI warns on skew.
const VersionHeader = "Pipeops-Agent-Version"

// Error codes carried in Error.Code.
const (
	CodeNotFound      = "not_found"
	CodeAccessDenied  = "access_denied"
	CodeNotRegistered = "not_registered"
	CodeUnavailable   = "unavailable"
	CodeBadRequest    = "bad_request"
	CodeInternal      = "internal"
)

// Error is the body of every non-2xx local API answer.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Hint    string `json:"hint,omitempty"`
}

func (e *Error) Error() string { return e.Message }

// Condition mirrors one health condition.
type Condition struct {
	Name     string    `json:"name"`
	OK       bool      `json:"ok"`
	Reason   string    `json:"reason,omitempty"`
	Required bool      `json:"required"`
	Since    time.Time `json:"since"`
}

// StatusResponse is GET /v1/status: everything `pipeopsctl status` and the
// dashboard show. Each section is filled by the subsystem that owns it.
type StatusResponse struct {
	Version     string    `json:"version"`
	Commit      string    `json:"commit"`
	AgentID     string    `json:"agent_id"`
	ClusterName string    `json:"cluster_name"`
	ClusterID   string    `json:"cluster_id,omitempty"`
	StartedAt   time.Time `json:"started_at"`
	// Ready is the truth /ready tells; NotReady lists why not.
	Ready      bool        `json:"ready"`
	NotReady   []string    `json:"not_ready,omitempty"`
	Conditions []Condition `json:"conditions"`

	Link       LinkStatus       `json:"link"`
	Kubernetes KubeStatus       `json:"kubernetes"`
	Proxy      ProxyStatus      `json:"proxy"`
	Tunnel     TunnelStatus     `json:"tunnel"`
	Routes     RoutesStatus     `json:"routes"`
	Monitoring MonitoringStatus `json:"monitoring"`
	// HA is set when ha.enabled: this agent's role and who leads.
	HA *HAStatus `json:"ha,omitempty"`
}

// HA roles (HAStatus.Role).
const (
	HAStarting = "starting" // waiting for the API server before campaigning
	HAStandby  = "standby"
	HALeader   = "leader"
	HAStopping = "stopping" // the leader's term is ending
	// HAHolding is a leader cut off from the API server that keeps its
	// control-plane link (no new dials, no calls to the API server) until
	// the API server answers again (docs/ha.md).
	HAHolding = "holding"
)

// HAStatus is GET /v1/ha and the status snapshot's ha section: high
// availability across server nodes (docs/ha.md).
type HAStatus struct {
	Role     string `json:"role"`
	Identity string `json:"identity"` // this candidate (the node)
	Leader   string `json:"leader,omitempty"`
	// LeaderSince is when the current leader acquired the lease.
	LeaderSince time.Time     `json:"leader_since,omitzero"`
	Candidates  []HACandidate `json:"candidates,omitempty"`
	// Lease settings in use.
	LeaseDuration string `json:"lease_duration"`
	RenewDeadline string `json:"renew_deadline"`
	RetryPeriod   string `json:"retry_period"`
	// LastError is why the last look at the Leases failed ("" when it worked).
	LastError string `json:"last_error,omitempty"`
}

// HACandidate is one agent taking part in the election.
type HACandidate struct {
	Identity string    `json:"identity"`
	Renewed  time.Time `json:"renewed,omitzero"` // its candidate Lease's last renewal
	Alive    bool      `json:"alive"`            // renewed within three lease durations
	Leader   bool      `json:"leader"`
	Self     bool      `json:"self"`
}

// Link states.
const (
	LinkConnecting   = "connecting"
	LinkConnected    = "connected"
	LinkReconnecting = "reconnecting"
	LinkDisconnected = "disconnected"
)

// LinkStatus is the control-plane WebSocket.
type LinkStatus struct {
	State          string    `json:"state"`
	Mode           string    `json:"mode,omitempty"` // controller or gateway
	URL            string    `json:"url,omitempty"`
	Registered     bool      `json:"registered"`
	ConnectedSince time.Time `json:"connected_since,omitzero"`
	LastHeartbeat  time.Time `json:"last_heartbeat,omitzero"`
	Reconnects     int       `json:"reconnects"`
	Registrations  int       `json:"registrations"`
	LastError      string    `json:"last_error,omitempty"`
	LastErrorAt    time.Time `json:"last_error_at,omitzero"`
	NextRetry      time.Time `json:"next_retry,omitzero"`
	Generation     uint64    `json:"generation"`
}

// KubeStatus is the local cluster as the agent sees it.
type KubeStatus struct {
	Reachable   bool   `json:"reachable"`
	Kubeconfig  string `json:"kubeconfig,omitempty"`
	Server      string `json:"server,omitempty"`
	Version     string `json:"version,omitempty"`
	Nodes       int    `json:"nodes"`
	Pods        int    `json:"pods"`
	CPUUsage    string `json:"cpu_usage,omitempty"`
	MemoryUsage string `json:"memory_usage,omitempty"`
	// CPUSource and MemorySource say where each figure came from: "proc"
	// (this machine's /proc), "metrics-api" or "requests", each with its
	// nodes, e.g. "proc on vm-1 + metrics-api on 2 nodes".
	CPUSource    string    `json:"cpu_source,omitempty"`
	MemorySource string    `json:"memory_source,omitempty"`
	LastError    string    `json:"last_error,omitempty"`
	CheckedAt    time.Time `json:"checked_at,omitzero"`
}

// ProxyStatus is the Kubernetes API proxy.
type ProxyStatus struct {
	InFlight        int     `json:"in_flight"`
	Requests        int64   `json:"requests"`
	Errors          int64   `json:"errors"`
	BytesIn         int64   `json:"bytes_in"`
	BytesOut        int64   `json:"bytes_out"`
	LatencyP50Ms    float64 `json:"latency_p50_ms"`
	LatencyP99Ms    float64 `json:"latency_p99_ms"`
	WebSocketRelays int     `json:"websocket_relays"`
}

// Forward is one configured tunnel forward.
type Forward struct {
	Name      string `json:"name"`
	LocalAddr string `json:"local_addr"`
}

// TunnelStatus is the yamux reverse tunnel.
type TunnelStatus struct {
	Active        bool      `json:"active"`
	Forwards      []Forward `json:"forwards"`
	ActiveStreams int       `json:"active_streams"`
	StreamsTotal  int64     `json:"streams_total"`
	BytesIn       int64     `json:"bytes_in"`
	BytesOut      int64     `json:"bytes_out"`
	Errors        int64     `json:"errors"`
}

// RoutesStatus is ingress route registration.
type RoutesStatus struct {
	Enabled           bool      `json:"enabled"`
	Count             int       `json:"count"`
	RoutingMode       string    `json:"routing_mode,omitempty"`
	PublicEndpoint    string    `json:"public_endpoint,omitempty"`
	IngressController string    `json:"ingress_controller,omitempty"`
	LastSync          time.Time `json:"last_sync,omitzero"`
	LastSyncResult    string    `json:"last_sync_result,omitempty"`
	LastError         string    `json:"last_error,omitempty"`
}

// Release states.
const (
	ReleasePending    = "pending"
	ReleaseInstalling = "installing"
	ReleaseReady      = "ready"
	ReleaseFailed     = "failed"
	// ReleaseSkipped: not installed on purpose (e.g. Traefik when the
	// cluster already has an ingress controller); Reason says why.
	ReleaseSkipped = "skipped"
	// ReleaseDisabled: switched off in the configuration
	// (monitoring.components.<name>.enabled: false).
	ReleaseDisabled = "disabled"
	// ReleaseUninstalling and ReleaseUninstalled follow
	// "pipeopsctl monitoring uninstall".
	ReleaseUninstalling = "uninstalling"
	ReleaseUninstalled  = "uninstalled"
)

// Release is one component of the monitoring stack: a Helm release, or
// the CoreDNS rewrite (component coredns, Name the ConfigMap, no Chart).
type Release struct {
	Component string    `json:"component"`
	Name      string    `json:"name"`
	Namespace string    `json:"namespace"`
	Chart     string    `json:"chart"`
	Version   string    `json:"version,omitempty"`
	State     string    `json:"state"`
	Reason    string    `json:"reason,omitempty"`
	UpdatedAt time.Time `json:"updated_at,omitzero"`
	// Revision is Helm's release revision (0 before the first install).
	Revision int `json:"revision,omitempty"`
}

// MonitoringStatus is the monitoring stack.
type MonitoringStatus struct {
	Enabled  bool      `json:"enabled"`
	Releases []Release `json:"releases,omitempty"`
	// Profile is the size the stack was rendered for (small, medium, large).
	Profile string `json:"profile,omitempty"`
	// Endpoints are the advertised in-cluster URLs of ready components
	// (no credentials).
	Endpoints []MonitoringEndpoint `json:"endpoints,omitempty"`
	LastRound time.Time            `json:"last_round,omitzero"`
	LastError string               `json:"last_error,omitempty"`
	NextRetry time.Time            `json:"next_retry,omitzero"`
	// Suspended: uninstalled through the local API; nothing is reinstalled
	// until "pipeopsctl monitoring install" or a restart.
	Suspended bool `json:"suspended,omitempty"`
}

// MonitoringEndpoint is one advertised monitoring URL.
type MonitoringEndpoint struct {
	Name string `json:"name"`
	URL  string `json:"url"`
}

// MonitoringEvent is one line of the NDJSON stream of
// POST /v1/monitoring/install and /uninstall: a release's new state, or,
// on the last line, Done with the final status and Error when it failed.
type MonitoringEvent struct {
	Time    time.Time         `json:"time"`
	Release Release           `json:"release,omitzero"`
	Message string            `json:"message,omitempty"`
	Done    bool              `json:"done,omitempty"`
	Error   string            `json:"error,omitempty"`
	Status  *MonitoringStatus `json:"status,omitempty"`
}
