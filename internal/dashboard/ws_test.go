package dashboard

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
)

func dialWS(t *testing.T, f *fixture, query string, h http.Header) *websocket.Conn {
	t.Helper()
	url := "ws" + strings.TrimPrefix(f.http.URL, "http") + "/ws" + query
	c, resp, err := websocket.DefaultDialer.Dial(url, h)
	if err != nil {
		code := 0
		if resp != nil {
			code = resp.StatusCode
		}
		t.Fatalf("dial %s: %v (HTTP %d)", url, err, code)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// readUntil returns the first message of type typ, skipping pushed events.
func readUntil(t *testing.T, c *websocket.Conn, typ string) wsMessage {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		var m wsMessage
		if err := c.ReadJSON(&m); err != nil {
			t.Fatalf("waiting for %q: %v", typ, err)
		}
		if m.Type == typ {
			return m
		}
	}
}

func TestWebSocketAnswersRequestsByType(t *testing.T) {
	f := newFixture(t, Options{EnableWebSocket: true})
	c := dialWS(t, f, "", nil)
	cases := []struct {
		name     string
		send     string
		wantType string
		check    func(t *testing.T, m wsMessage)
	}{
		{"get_status answers status_response with the snapshot", `{"type":"get_status","request_id":"r1"}`, WSStatusResponse,
			func(t *testing.T, m wsMessage) {
				var s Snapshot
				if err := json.Unmarshal(m.Data, &s); err != nil || s.AgentID != "agent-test" || s.Link.State != apitype.LinkConnected {
					t.Fatalf("status_response data = %s (%v)", m.Data, err)
				}
			}},
		{"ping answers pong", `{"type":"ping","request_id":"r2"}`, WSPong,
			func(t *testing.T, m wsMessage) {
				if !strings.Contains(string(m.Data), `"time"`) {
					t.Fatalf("pong data = %s", m.Data)
				}
			}},
		{"an unknown type answers error naming it", `{"type":"get_secrets","request_id":"r3"}`, WSError,
			func(t *testing.T, m wsMessage) {
				if !strings.Contains(m.Error, `"get_secrets"`) {
					t.Fatalf("error = %q", m.Error)
				}
			}},
		{"malformed JSON answers error and keeps the socket", `{not json`, WSError,
			func(t *testing.T, m wsMessage) {
				if !strings.Contains(m.Error, "malformed") {
					t.Fatalf("error = %q", m.Error)
				}
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := c.WriteMessage(websocket.TextMessage, []byte(tc.send)); err != nil {
				t.Fatal(err)
			}
			m := readUntil(t, c, tc.wantType)
			var req struct {
				RequestID string `json:"request_id"`
			}
			if json.Unmarshal([]byte(tc.send), &req) == nil && m.RequestID != req.RequestID {
				t.Fatalf("request_id = %q; want %q", m.RequestID, req.RequestID)
			}
			tc.check(t, m)
		})
	}
}

func TestWebSocketPushesStatusAndLogEventsWithIDs(t *testing.T) {
	logs := NewLogBuffer(10)
	f := newFixture(t, Options{EnableWebSocket: true, Logs: logs})
	c := dialWS(t, f, "", nil)
	first := readUntil(t, c, EventStatus)
	if first.ID == "" {
		t.Fatal("status event without an id")
	}
	logs.Add(newWarn("disk almost full"))
	m := readUntil(t, c, EventLog)
	var l LogLine
	if err := json.Unmarshal(m.Data, &l); err != nil || l.Msg != "disk almost full" || l.Level != "WARN" {
		t.Fatalf("log event = %s (%v)", m.Data, err)
	}
	// Resume: a new socket from the log's ID gets no older log again.
	c2 := dialWS(t, f, "?last_event_id="+m.ID, nil)
	logs.Add(newWarn("second"))
	if m2 := readUntil(t, c2, EventLog); !strings.Contains(string(m2.Data), "second") {
		t.Fatalf("resumed socket replayed %s; want only the newer line", m2.Data)
	}
}

func TestWebSocketClientThatFloodsRequestsIsDropped(t *testing.T) {
	f := newFixture(t, Options{EnableWebSocket: true, Interval: time.Hour})
	c := dialWS(t, f, "", nil)
	// Send requests without ever reading: the replies queue fills and the
	// agent drops the viewer rather than buffer answers without bound.
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 100000; i++ {
			c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			if c.WriteMessage(websocket.TextMessage, []byte(`{"type":"ping"}`)) != nil {
				return
			}
		}
	}()
	eventually(t, "the flooding viewer to be dropped", func() bool { return droppedCount(f, "request flood")+droppedCount(f, "slow") > 0 })
	c.Close()
	<-done
	eventually(t, "no viewer left", func() bool { return f.srv.hub.count() == 0 })
}
