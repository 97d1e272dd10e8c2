package link

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/devplane"
	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

// wire reads the devplane's check of every message the agent sent.
func (p *devplaneProc) wire() devplane.WireReport {
	p.t.Helper()
	var r devplane.WireReport
	resp := p.admin("GET", "/admin/wire", "")
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		p.t.Fatalf("GET /admin/wire: %v", err)
	}
	return r
}

// send makes the devplane send one message to the agent.
func (p *devplaneProc) send(clusterID, typ, requestID string, payload any) {
	p.t.Helper()
	b, _ := json.Marshal(map[string]any{"type": typ, "request_id": requestID, "payload": payload})
	resp := p.admin("POST", "/admin/clusters/"+clusterID+"/send", string(b))
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		body, _ := io.ReadAll(resp.Body)
		p.t.Fatalf("send %s: HTTP %d %s", typ, resp.StatusCode, body)
	}
}

// TestEveryMessageTheAgentSendsCarriesOnlyTheFieldsTheSpecNames drives the
// real agent into sending every kind of message it can send on this
// cluster, and has the reference control plane decode each one against
// protocol.md §3–4 with unknown fields disallowed (devplane.CheckWire).
func TestEveryMessageTheAgentSendsCarriesOnlyTheFieldsTheSpecNames(t *testing.T) {
	env := kubetest.Cluster(t)
	dp := startDevplane(t)
	a := newAgent(t, dp.url(), env.Kubeconfig, "")
	a.start()
	testbin.Eventually(t, 60*time.Second, "registered and heartbeating on the gateway", heartbeatingOnGateway(dp, 1))
	id := dp.only().ID

	dp.send(id, "ping", "p-1", map[string]any{})
	dp.send(id, "cluster_config", "c-1", map[string]any{})
	dp.send(id, "tcp_tunnel_start", "t-1", map[string]any{"tunnel_id": "t-1", "gateway_port": 80})
	dp.send(id, "proxy_request", "r-1", map[string]any{"method": "GET", "path": "/version"})
	dp.send(id, "proxy_request", "r-2", map[string]any{"method": "GET", "path": "/version", "supports_response_streaming": true})
	dp.send(id, "proxy_request", "r-3", map[string]any{"method": "GET", "path": "/api/../etc", "supports_response_streaming": true})
	dp.send(id, "proxy_request", "r-4", map[string]any{"method": "GET", "path": "/api/../etc"})
	// A WebSocket watch through the kubectl relay: data frames for the
	// namespace's existing ConfigMap, then the server ends it (close). The
	// API server's WebSocket watch wants an Origin header.
	dp.send(id, "ws_start", "", map[string]any{"stream_id": "s-1", "method": "GET", "headers": map[string]string{"Origin": "https://127.0.0.1"},
		"path": "/api/v1/namespaces/" + env.Namespace + "/configmaps", "query": "watch=true&timeoutSeconds=1"})
	dp.send(id, "ws_start", "", map[string]any{"stream_id": "s-2", "method": "GET", "path": "/api/v1/../x"})

	want := []string{"register", "heartbeat", "gateway_hello_ack", "pong", "protocol_fallback", "tcp_tunnel_close",
		"proxy_response", "proxy_response_header", "proxy_response_chunk", "proxy_response_end", "proxy_response_abort",
		"proxy_error", "proxy_websocket_data", "proxy_websocket_close"}
	var r devplane.WireReport
	testbin.Eventually(t, 30*time.Second, "every message kind seen", func() bool {
		r = dp.wire()
		for _, typ := range want {
			if r.Seen[typ] == 0 {
				return false
			}
		}
		return true
	})
	for _, v := range r.Violations {
		t.Errorf("%s is not wire-exact: %s", v.Type, v.Error)
	}
	var types []string
	for typ, n := range r.Seen {
		types = append(types, fmt.Sprintf("%s×%d", typ, n))
	}
	slices.Sort(types)
	t.Logf("checked: %v", types)
}
