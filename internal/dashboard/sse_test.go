package dashboard

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

func TestSSEFramesAreIDEventDataAndABlankLine(t *testing.T) {
	cases := []struct {
		name string
		ev   *Event
		want string
	}{
		{"compact JSON is one data line", &Event{ID: "e-1", Type: "status", Data: json.RawMessage(`{"a":1}`)},
			"id: e-1\nevent: status\ndata: {\"a\":1}\n\n"},
		{"a newline becomes a second data line", &Event{ID: "e-2", Type: "log", Data: json.RawMessage("x\ny")},
			"id: e-2\nevent: log\ndata: x\ndata: y\n\n"},
		{"CR and CRLF cannot end the frame early", &Event{ID: "e-3", Type: "log", Data: json.RawMessage("a\r\nb\rc")},
			"id: e-3\nevent: log\ndata: a\ndata: b\ndata: c\n\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := string(sseFrame(tc.ev)); got != tc.want {
				t.Fatalf("frame = %q; want %q", got, tc.want)
			}
		})
	}
}

// TestSSEReplayMatchesGolden pins the exact bytes a new viewer receives:
// the retry hint, the recent log lines and the latest status, in ID order.
func TestSSEReplayMatchesGolden(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	logs := NewLogBuffer(10)
	s := New(Options{Now: func() time.Time { return at }, EnableSSE: true, Logs: logs,
		Snapshot: func(context.Context) apitype.StatusResponse {
			return apitype.StatusResponse{Version: "1.0.0", AgentID: "agent-golden", ClusterName: "golden", StartedAt: at,
				Link: apitype.LinkStatus{State: apitype.LinkConnected, Reconnects: 2}}
		}})
	logs.Add(slog.NewRecord(at, slog.LevelWarn, "heartbeat late", 0))
	s.ingestLogs()
	s.produce(context.Background())
	r := slog.NewRecord(at, slog.LevelError, "register failed", 0)
	r.AddAttrs(slog.String("err", "401"))
	logs.Add(r)
	s.ingestLogs()

	mux := http.NewServeMux()
	s.Register(mux.Handle)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/api/realtime/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	// The replay is written in one piece; read until its last frame.
	var got bytes.Buffer
	buf := make([]byte, 4096)
	for strings.Count(got.String(), "\n\n") < 4 {
		n, err := resp.Body.Read(buf)
		got.Write(buf[:n])
		if err != nil {
			t.Fatalf("read: %v (got %q)", err, got.String())
		}
	}
	golden := filepath.Join("testdata", "sse_replay.golden")
	if *update {
		if err := os.WriteFile(golden, got.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got.String() != string(want) {
		t.Fatalf("replay differs from %s (go test -update rewrites it):\ngot:\n%s\nwant:\n%s", golden, got.String(), want)
	}
}

func TestSSEResumesFromLastEventID(t *testing.T) {
	logs := NewLogBuffer(50)
	f := newFixture(t, Options{EnableSSE: true, Logs: logs, Interval: time.Hour})
	warn := func(msg string) { logs.Add(slog.NewRecord(time.Now(), slog.LevelWarn, msg, 0)) }

	first := openSSE(t, f.http.URL+"/api/realtime/events", nil)
	warn("one")
	var lastID string
	for {
		ev := first.nextEvent(t)
		if ev.Type == EventLog && strings.Contains(ev.Data, `"one"`) {
			lastID = ev.ID
			break
		}
	}
	first.resp.Body.Close()
	warn("two")
	warn("three")

	cases := []struct {
		name     string
		lastID   string
		wantLogs []string
	}{
		{"a known ID replays only what came after it", lastID, []string{"two", "three"}},
		{"an ID from an earlier agent process replays everything kept", "oldepoch-7", []string{"one", "two", "three"}},
		{"no ID replays everything kept", "", []string{"one", "two", "three"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			if tc.lastID != "" {
				h.Set("Last-Event-ID", tc.lastID)
			}
			r := openSSE(t, f.http.URL+"/api/realtime/events", h)
			var got []string
			sawStatus := false
			prev := ""
			for len(got) < len(tc.wantLogs) || !sawStatus {
				ev := r.nextEvent(t)
				if prev != "" && seqOf(ev.ID) <= seqOf(prev) {
					t.Fatalf("event IDs not increasing: %s after %s", ev.ID, prev)
				}
				prev = ev.ID
				switch ev.Type {
				case EventStatus:
					sawStatus = true
				case EventLog:
					var l LogLine
					if err := json.Unmarshal([]byte(ev.Data), &l); err != nil {
						t.Fatal(err)
					}
					got = append(got, l.Msg)
				}
			}
			if strings.Join(got, ",") != strings.Join(tc.wantLogs, ",") {
				t.Fatalf("replayed logs = %v; want %v", got, tc.wantLogs)
			}
		})
	}
}

func seqOf(id string) int {
	_, n, _ := strings.Cut(id, "-")
	var v int
	for _, c := range n {
		v = v*10 + int(c-'0')
	}
	return v
}

func TestSSESendsAKeepaliveCommentWhenIdle(t *testing.T) {
	f := newFixture(t, Options{EnableSSE: true, Interval: time.Hour, IdleInterval: time.Hour, Keepalive: 30 * time.Millisecond})
	r := openSSE(t, f.http.URL+"/events", nil)
	for {
		if ev := r.next(t); ev.Comment == "keepalive" {
			return
		}
	}
}

func TestSSEStreamsLiveStatusChanges(t *testing.T) {
	f := newFixture(t, Options{EnableSSE: true})
	r := openSSE(t, f.http.URL+"/api/realtime/events", nil)
	f.state.Store(apitype.LinkReconnecting)
	for {
		ev := r.nextEvent(t)
		var s Snapshot
		if err := json.Unmarshal([]byte(ev.Data), &s); err != nil {
			t.Fatal(err)
		}
		if ev.Type == EventStatus && s.Link.State == apitype.LinkReconnecting {
			if n := len(s.LinkHistory); n < 2 || s.LinkHistory[n-1].State != apitype.LinkReconnecting {
				t.Fatalf("link history = %+v; want it to end with the change to reconnecting", s.LinkHistory)
			}
			return
		}
	}
}

func TestSwitchedOffTransportsAnswer404AndThePageFallsBackToPolling(t *testing.T) {
	cases := []struct {
		name       string
		sse, ws    bool
		transports string
	}{
		{"both on", true, true, "sse ws poll"},
		{"SSE off", false, true, "ws poll"},
		{"WebSocket off", true, false, "sse poll"},
		{"both off", false, false, "poll"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, Options{EnableSSE: tc.sse, EnableWebSocket: tc.ws})
			want := map[string]int{"/api/realtime/events": 404, "/events": 404, "/ws": 404, "/api/status": 200, "/v1/status": 200, "/api/logs": 200, "/": 200, "/dashboard": 200, "/nope": 404}
			if tc.sse {
				want["/api/realtime/events"], want["/events"] = 200, 200
			}
			if tc.ws {
				want["/ws"] = 400 // a plain GET is not an upgrade
			}
			for path, code := range want {
				ctx, cancel := context.WithCancel(context.Background())
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, f.http.URL+path, nil)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				body := []byte{}
				if path == "/" {
					body, _ = io.ReadAll(resp.Body)
				}
				cancel()
				resp.Body.Close()
				if resp.StatusCode != code {
					t.Errorf("GET %s = %d; want %d", path, resp.StatusCode, code)
				}
				if path == "/" && !bytes.Contains(body, []byte(`data-transports="`+tc.transports+`"`)) {
					t.Errorf("page does not announce transports %q", tc.transports)
				}
			}
		})
	}
}
