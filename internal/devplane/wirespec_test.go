package devplane

import (
	"strings"
	"testing"
)

func TestTheWireCheckAcceptsTheSpecsExamplesAndRefusesAnyOtherField(t *testing.T) {
	for _, tc := range []struct {
		name, msg, wantErr string
	}{
		{"heartbeat from §4.2", `{"type":"heartbeat","payload":{"cluster_id":"c","agent_id":"a","status":"healthy","tunnel_status":"connected","metadata":{"agent_version":"0.3.1","k8s_version":"v1.34.3+k3s1","k8s_nodes":1,"k8s_pods":31,"cpu_usage":"12.4%","memory_usage":"48.0%","is_private":true,"gateway_routes":3},"grafana_url":"http://g","grafana_username":"admin","grafana_password":"p","grafana_ssl":false},"timestamp":"2026-06-16T04:51:00.000000001Z"}`, ""},
		{"register from §4.1", `{"type":"register","request_id":"req_1_a","payload":{"agent_id":"a","name":"prod","k8s_version":"v1","hostname":"h","agent_version":"0.3.1","server_ip":"203.0.113.10","region":"DE","cloud_provider":"hetzner","tunnel_port_config":{"kubernetes_api":6443,"kubelet":10250,"agent_http":8080},"labels":{"hostname":"h"},"server_specs":{"cpu_cores":4,"memory_gb":7,"disk_gb":76,"os":"Ubuntu"},"features":{"supports_streaming":true,"supports_binary_protocol":true,"supports_compression":true,"supports_websocket_proxy":true,"supports_gateway":true,"supports_response_streaming":true},"metadata":{"agent_mode":"vm-agent","registration_timestamp":"2026-06-16T04:50:28Z","registration_mode":"resume","country_code":"DE"},"cluster_id":"c","k8s_service_token":"t"},"timestamp":"2026-06-16T04:50:28.123456789Z"}`, ""},
		{"proxy_response_end", `{"type":"proxy_response_end","request_id":"r","payload":{},"timestamp":"t"}`, ""},
		{"an extra heartbeat metadata key", `{"type":"heartbeat","payload":{"metadata":{"usage_source":"requests"}},"timestamp":"t"}`, `unknown field "usage_source"`},
		{"an extra register metadata key", `{"type":"register","payload":{"metadata":{"agent_mode":"vm-agent","k8s_unreachable":"true"}},"timestamp":"t"}`, `metadata key "k8s_unreachable"`},
		{"an extra close field", `{"type":"proxy_websocket_close","request_id":"s","payload":{"stream_id":"s","reason":"eof"},"timestamp":"t"}`, `unknown field "reason"`},
		{"an extra envelope field", `{"type":"pong","payload":{"timestamp":"t"},"timestamp":"t","agent":"x"}`, `unknown field "agent"`},
		{"no payload", `{"type":"pong","timestamp":"t"}`, "payload must be an object"},
		{"a type the spec does not list", `{"type":"status_report","payload":{},"timestamp":"t"}`, "not a type the spec lets an agent send"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckWire([]byte(tc.msg))
			if tc.wantErr == "" && err != nil {
				t.Fatalf("CheckWire = %v; want nil", err)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("CheckWire = %v; want an error containing %q", err, tc.wantErr)
			}
		})
	}
}
