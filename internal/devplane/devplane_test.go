package devplane

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
)

func dialWS(t *testing.T, url, token string) (*websocket.Conn, *http.Response, error) {
	t.Helper()
	h := http.Header{}
	if token != "" {
		h.Set("Authorization", "Bearer "+token)
	}
	return websocket.DefaultDialer.Dial(strings.Replace(url, "http", "ws", 1), h)
}

func readEnv(t *testing.T, ws *websocket.Conn) *protocol.Envelope {
	t.Helper()
	ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, b, err := ws.ReadMessage()
	if err != nil {
		t.Fatal(err)
	}
	env, err := protocol.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

func send(t *testing.T, ws *websocket.Conn, typ, id string, payload any) {
	t.Helper()
	b, _ := protocol.Encode(typ, id, payload, time.Now())
	if err := ws.WriteMessage(websocket.TextMessage, b); err != nil {
		t.Fatal(err)
	}
}

func TestTheControllerRegistersWithAStableIDAndTheAdminAPIListsIt(t *testing.T) {
	s := New(Config{Tokens: []string{"tok"}})
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()

	if _, resp, err := dialWS(t, ts.URL+ControllerPath, "wrong"); err == nil || resp.StatusCode != 401 {
		t.Fatalf("wrong token: err=%v; want a 401 handshake", err)
	}
	for i := 1; i <= 2; i++ {
		ws, _, err := dialWS(t, ts.URL+ControllerPath, "tok")
		if err != nil {
			t.Fatal(err)
		}
		send(t, ws, protocol.TypeRegister, "req_1", protocol.Register{AgentID: "agent-x", Name: "c", K8sServiceToken: "secret-sa"})
		env := readEnv(t, ws)
		var rs protocol.RegisterSuccess
		_ = env.DecodePayload(&rs)
		if env.Type != protocol.TypeRegisterSuccess || env.RequestID != "req_1" || rs.ClusterID != ClusterIDFor("agent-x") ||
			rs.GatewayWSURL != strings.Replace(ts.URL, "http", "ws", 1)+GatewayPath {
			t.Fatalf("register answer = %+v %+v", env, rs)
		}
		send(t, ws, protocol.TypeHeartbeat, "", protocol.Heartbeat{ClusterID: rs.ClusterID, Status: "healthy"})
		if env := readEnv(t, ws); env.Type != protocol.TypeHeartbeatAck {
			t.Fatalf("heartbeat answered with %s", env.Type)
		}
		ws.Close()
	}
	resp, err := http.Get(ts.URL + "/admin/clusters")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var cs []ClusterInfo
	if err := json.NewDecoder(resp.Body).Decode(&cs); err != nil {
		t.Fatal(err)
	}
	if len(cs) != 1 || cs[0].Registrations != 2 || cs[0].Heartbeats != 2 || cs[0].Heartbeat().Status != "healthy" ||
		strings.Contains(string(cs[0].LastRegister), "secret-sa") {
		t.Fatalf("admin clusters = %+v", cs)
	}
}

func TestTheGatewayAnswersUnknownClustersWithClusterNotFound(t *testing.T) {
	s := New(Config{Tokens: []string{"tok"}})
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	ws, _, err := dialWS(t, ts.URL+GatewayPath+"?cluster_uuid=nope", "tok")
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	env := readEnv(t, ws)
	var p protocol.ErrorPayload
	_ = env.DecodePayload(&p)
	if env.Type != protocol.TypeError || p.Error != "cluster not found" {
		t.Fatalf("got %+v", env)
	}
}

func TestHandshakeFaultsApplyTheGivenNumberOfTimes(t *testing.T) {
	s := New(Config{Tokens: []string{"tok"}})
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	req, _ := http.NewRequest(http.MethodPut, ts.URL+"/admin/faults", strings.NewReader(`{"controller_status":503,"times":2}`))
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 200 {
		t.Fatalf("PUT /admin/faults: %v", err)
	}
	for i, want := range []int{503, 503, 101} {
		ws, resp, _ := dialWS(t, ts.URL+ControllerPath, "tok")
		if resp.StatusCode != want {
			t.Fatalf("handshake %d = %d; want %d", i, resp.StatusCode, want)
		}
		if ws != nil {
			ws.Close()
		}
	}
}

func TestMainNeedsATokenAndServesUntilCancelled(t *testing.T) {
	var out, errb strings.Builder
	if code := Main(context.Background(), []string{"--listen", "127.0.0.1:0"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "--token") {
		t.Fatalf("Main without token = %d, %q", code, errb.String())
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int)
	pr := &syncWriter{ch: make(chan string, 4)}
	go func() { done <- Main(ctx, []string{"--listen", "127.0.0.1:0", "--token", "tok"}, pr, &errb) }()
	line := <-pr.ch
	if !strings.Contains(line, "listening on http://127.0.0.1:") {
		t.Fatalf("first line = %q", line)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("exit code %d", code)
	}
}

type syncWriter struct{ ch chan string }

func (w *syncWriter) Write(p []byte) (int, error) {
	select {
	case w.ch <- string(p):
	default:
	}
	return len(p), nil
}
