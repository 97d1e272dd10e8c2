package devplane

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
)

// The reference control plane checks every message an agent sends against
// the field lists of protocol.md §3 and §4, written out here independently
// of the agent's own types: a message carries the fields the spec names for
// it and nothing else (wire-exact). Each violation is kept (GET /admin/wire)
// so that every test and benchmark that runs an agent against the devplane
// also checks its wire, and a dedicated test asserts there are none.

// specEnvelope is §3.
type specEnvelope struct {
	Type      string          `json:"type"`
	RequestID string          `json:"request_id"`
	Payload   json.RawMessage `json:"payload"`
	Timestamp string          `json:"timestamp"`
}

// specRegister is §4.1.
type specRegister struct {
	AgentID          string `json:"agent_id"`
	Name             string `json:"name"`
	K8sVersion       string `json:"k8s_version"`
	Hostname         string `json:"hostname"`
	AgentVersion     string `json:"agent_version"`
	ServerIP         string `json:"server_ip"`
	Region           string `json:"region"`
	CloudProvider    string `json:"cloud_provider"`
	TunnelPortConfig struct {
		KubernetesAPI int `json:"kubernetes_api"`
		Kubelet       int `json:"kubelet"`
		AgentHTTP     int `json:"agent_http"`
	} `json:"tunnel_port_config"`
	Labels      map[string]string `json:"labels"`
	ServerSpecs struct {
		CPUCores int    `json:"cpu_cores"`
		MemoryGB int    `json:"memory_gb"`
		DiskGB   int    `json:"disk_gb"`
		OS       string `json:"os"`
	} `json:"server_specs"`
	Features struct {
		SupportsStreaming         bool `json:"supports_streaming"`
		SupportsBinaryProtocol    bool `json:"supports_binary_protocol"`
		SupportsCompression       bool `json:"supports_compression"`
		SupportsWebSocketProxy    bool `json:"supports_websocket_proxy"`
		SupportsGateway           bool `json:"supports_gateway"`
		SupportsResponseStreaming bool `json:"supports_response_streaming"`
	} `json:"features"`
	Metadata        map[string]string `json:"metadata"`
	ClusterID       string            `json:"cluster_id"`
	K8sServiceToken string            `json:"k8s_service_token"`
}

// registerMetadataKeys are the register.metadata keys §4.1 names (whether
// the control plane accepts others is unspecified, so none are sent).
var registerMetadataKeys = []string{"agent_mode", "registration_timestamp", "registration_mode",
	"country_code", "region_name", "country_name", "network_org", "network_asn", "ip_intel_method"}

// specHeartbeat is §4.2.
type specHeartbeat struct {
	ClusterID    string `json:"cluster_id"`
	AgentID      string `json:"agent_id"`
	Status       string `json:"status"`
	TunnelStatus string `json:"tunnel_status"`
	Metadata     struct {
		AgentVersion  string `json:"agent_version"`
		K8sVersion    string `json:"k8s_version"`
		K8sNodes      int    `json:"k8s_nodes"`
		K8sPods       int    `json:"k8s_pods"`
		CPUUsage      string `json:"cpu_usage"`
		MemoryUsage   string `json:"memory_usage"`
		IsPrivate     bool   `json:"is_private"`
		GatewayRoutes int    `json:"gateway_routes"`
	} `json:"metadata"`
	PrometheusURL      string `json:"prometheus_url"`
	PrometheusUsername string `json:"prometheus_username"`
	PrometheusPassword string `json:"prometheus_password"`
	PrometheusSSL      bool   `json:"prometheus_ssl"`
	LokiURL            string `json:"loki_url"`
	LokiUsername       string `json:"loki_username"`
	LokiPassword       string `json:"loki_password"`
	LokiSSL            bool   `json:"loki_ssl"`
	GrafanaURL         string `json:"grafana_url"`
	GrafanaUsername    string `json:"grafana_username"`
	GrafanaPassword    string `json:"grafana_password"`
	GrafanaSSL         bool   `json:"grafana_ssl"`
	OpencostBaseURL    string `json:"opencost_base_url"`
	OpencostUsername   string `json:"opencost_username"`
	OpencostPassword   string `json:"opencost_password"`
	WorkerJoin         *struct {
		Provider    string            `json:"provider"`
		ServerURL   string            `json:"server_url"`
		Env         map[string]string `json:"env"`
		Commands    []string          `json:"commands"`
		GeneratedAt string            `json:"generated_at"`
		JoinCommand string            `json:"join_command"`
		Token       string            `json:"token"`
		ServerIP    string            `json:"server_ip"`
	} `json:"worker_join"`
}

// specPayloads maps every type an agent may send (§4) to its payload.
var specPayloads = map[string]func() any{
	"register":  func() any { return new(specRegister) },
	"heartbeat": func() any { return new(specHeartbeat) },
	"proxy_response": func() any {
		return new(struct {
			Status   int                 `json:"status"`
			Headers  map[string][]string `json:"headers"`
			Body     string              `json:"body"`
			Encoding string              `json:"encoding"`
		})
	},
	"proxy_response_header": func() any {
		return new(struct {
			Status  int                 `json:"status"`
			Headers map[string][]string `json:"headers"`
		})
	},
	"proxy_response_chunk": func() any {
		return new(struct {
			Data     string `json:"data"`
			Encoding string `json:"encoding"`
			Size     int    `json:"size"`
		})
	},
	"proxy_response_end": func() any { return new(struct{}) },
	"proxy_response_abort": func() any {
		return new(struct {
			Error string `json:"error"`
		})
	},
	// The buffered shape is {error}; the kubectl relay's adds request_id (§4.3).
	"proxy_error": func() any {
		return new(struct {
			RequestID string `json:"request_id"`
			Error     string `json:"error"`
		})
	},
	"proxy_websocket_data": func() any {
		return new(struct {
			RequestID   string `json:"request_id"`
			StreamID    string `json:"stream_id"`
			Data        string `json:"data"`
			MessageType int    `json:"message_type"`
		})
	},
	"proxy_websocket_close": func() any {
		return new(struct {
			StreamID  string `json:"stream_id"`
			RequestID string `json:"request_id"`
		})
	},
	"gateway_hello_ack": func() any {
		return new(struct {
			UseYamux bool `json:"use_yamux"`
			// Negotiated: sent only when the gateway's hello offered it
			// (docs/tunnel.md, UDP framing).
			UDPFraming string `json:"udp_framing"`
		})
	},
	"pong": func() any {
		return new(struct {
			Timestamp string `json:"timestamp"`
		})
	},
	"protocol_fallback": func() any {
		return new(struct {
			AgentVersion      string   `json:"agent_version"`
			UnknownType       string   `json:"unknown_type"`
			SupportedTypes    []string `json:"supported_types"`
			FallbackMode      string   `json:"fallback_mode"`
			ProtocolVersion   string   `json:"protocol_version"`
			Timestamp         string   `json:"timestamp"`
			OriginalRequestID string   `json:"original_request_id"`
		})
	},
	"backpressure": func() any {
		return new(struct {
			RequestID string `json:"request_id"`
			Reason    string `json:"reason"`
		})
	},
	"tcp_tunnel_data": func() any {
		return new(struct {
			Data      string `json:"data"`
			Direction string `json:"direction"`
		})
	},
	"tcp_tunnel_close": func() any {
		return new(struct {
			Reason        string `json:"reason"`
			BytesSent     int64  `json:"bytes_sent"`
			BytesReceived int64  `json:"bytes_received"`
			DurationMs    int64  `json:"duration_ms"`
			Error         string `json:"error"`
		})
	},
	"udp_tunnel_data": func() any {
		return new(struct {
			TunnelID   string `json:"tunnel_id"`
			Data       string `json:"data"`
			ClientAddr string `json:"client_addr"`
			ClientPort int    `json:"client_port"`
			Direction  string `json:"direction"`
		})
	},
}

// SpecTypes lists the message types §4 lets an agent send.
func SpecTypes() []string {
	out := make([]string, 0, len(specPayloads))
	for t := range specPayloads {
		out = append(out, t)
	}
	slices.Sort(out)
	return out
}

// CheckWire decodes one agent message against the spec's field lists with
// unknown fields disallowed. It returns nil for a wire-exact message.
func CheckWire(raw []byte) error {
	var env specEnvelope
	if err := strictDecode(raw, &env); err != nil {
		return fmt.Errorf("envelope: %w", err)
	}
	if env.Type == "" || env.Timestamp == "" {
		return fmt.Errorf("envelope of %q: type and timestamp are required", env.Type)
	}
	mk := specPayloads[env.Type]
	if mk == nil {
		return fmt.Errorf("%q is not a type the spec lets an agent send", env.Type)
	}
	if len(bytes.TrimSpace(env.Payload)) == 0 || !bytes.HasPrefix(bytes.TrimSpace(env.Payload), []byte("{")) {
		return fmt.Errorf("%s: payload must be an object (§3)", env.Type)
	}
	p := mk()
	if err := strictDecode(env.Payload, p); err != nil {
		return fmt.Errorf("%s: %w", env.Type, err)
	}
	if r, ok := p.(*specRegister); ok {
		for k := range r.Metadata {
			if !slices.Contains(registerMetadataKeys, k) {
				return fmt.Errorf("register: metadata key %q is not in §4.1", k)
			}
		}
	}
	return nil
}

func strictDecode(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("trailing data after the object")
	}
	return nil
}

// WireViolation is one agent message that was not wire-exact.
type WireViolation struct {
	Type  string `json:"type"`
	Error string `json:"error"`
}

// wireLog keeps the violations (bounded) and counts messages by type.
type wireLog struct {
	mu         sync.Mutex
	violations []WireViolation
	seen       map[string]int
}

func (w *wireLog) record(typ string, raw []byte) {
	err := CheckWire(raw)
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.seen == nil {
		w.seen = map[string]int{}
	}
	w.seen[typ]++
	if err != nil && len(w.violations) < 100 {
		w.violations = append(w.violations, WireViolation{Type: typ, Error: err.Error()})
	}
}

// WireReport is what GET /admin/wire shows.
type WireReport struct {
	// Seen counts agent messages by type.
	Seen       map[string]int  `json:"seen"`
	Violations []WireViolation `json:"violations"`
}

// Wire reports every agent message type seen and the violations (at most 100).
func (s *Server) Wire() WireReport {
	s.wire.mu.Lock()
	defer s.wire.mu.Unlock()
	r := WireReport{Seen: map[string]int{}, Violations: append([]WireViolation{}, s.wire.violations...)}
	for k, v := range s.wire.seen {
		r.Seen[k] = v
	}
	return r
}

func (s *Server) registerWire(mux *http.ServeMux) {
	mux.HandleFunc("GET /admin/wire", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.Wire())
	})
}
