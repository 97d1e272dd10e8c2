package dashboard

import (
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func newWarn(msg string) slog.Record { return slog.NewRecord(time.Now(), slog.LevelWarn, msg, 0) }

// secret stands in for config.Secret: it redacts itself through LogValue.
type secret string

func (secret) LogValue() slog.Value { return slog.StringValue("[redacted]") }

func TestLogBufferKeepsRecentWarningsOnly(t *testing.T) {
	b := NewLogBuffer(3)
	b.Add(slog.NewRecord(time.Now(), slog.LevelInfo, "info is not kept", 0))
	for i := 1; i <= 5; i++ {
		b.Add(newWarn(fmt.Sprintf("w%d", i)))
	}
	cases := []struct {
		name  string
		since uint64
		want  string
	}{
		{"from the start returns what the ring still holds", 0, "w3,w4,w5"},
		{"from a seen line returns only newer ones", 4, "w5"},
		{"from the newest returns nothing", 5, ""},
		{"from beyond the newest returns nothing", 99, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			lines, newest := b.Since(tc.since)
			var got []string
			for _, l := range lines {
				got = append(got, l.Msg)
			}
			if strings.Join(got, ",") != tc.want || newest != 5 {
				t.Fatalf("Since(%d) = %v, %d; want %s, 5", tc.since, got, newest, tc.want)
			}
		})
	}
}

func TestLogLinesResolveValuersSoSecretsStayRedacted(t *testing.T) {
	b := NewLogBuffer(3)
	r := slog.NewRecord(time.Now(), slog.LevelError, "register failed", 0)
	r.AddAttrs(slog.Any("token", secret("hunter2")), slog.Group("http", slog.Int("status", 401)),
		slog.String("long", strings.Repeat("y", 2000)))
	b.Add(r)
	lines, _ := b.Since(0)
	l := lines[0]
	if l.Level != "ERROR" || l.Attrs["token"] != "[redacted]" || l.Attrs["http.status"] != "401" {
		t.Fatalf("line = %+v", l)
	}
	if len(l.Attrs["long"]) > maxAttrLen+4 {
		t.Fatalf("long attribute not truncated: %d bytes", len(l.Attrs["long"]))
	}
}

func TestLogBufferSignalsEachAdd(t *testing.T) {
	b := NewLogBuffer(3)
	ch := b.Changed()
	select {
	case <-ch:
		t.Fatal("changed before any line")
	default:
	}
	b.Add(newWarn("x"))
	<-ch
}

func TestEndpointURLsLoseUserInfoAndQuery(t *testing.T) {
	cases := map[string]string{
		"wss://gw.example/ws?cluster_uuid=x&token=abc": "wss://gw.example/ws",
		"https://user:pw@api.example:6443/base#frag":   "https://api.example:6443/base",
		"": "",
		"ws://127.0.0.1:9/api/v1/clusters/agent/ws": "ws://127.0.0.1:9/api/v1/clusters/agent/ws",
		"http://[::1]:x": "(unparsable URL)",
	}
	for in, want := range cases {
		if got := redactURL(in); got != want {
			t.Errorf("redactURL(%q) = %q; want %q", in, got, want)
		}
	}
}

func TestALogBurstIsCutToHalfAViewerQueueSoHealthyViewersStay(t *testing.T) {
	logs := NewLogBuffer(500)
	s := New(Options{Logs: logs, ViewerBuffer: 8})
	v, _, _ := s.hub.subscribe("", nil)
	for i := 0; i < 300; i++ {
		logs.Add(newWarn(fmt.Sprintf("burst %d", i)))
	}
	s.ingestLogs()
	evs, closed := s.hub.take(v)
	if closed {
		t.Fatalf("viewer dropped by a log burst (%s)", s.hub.closedReason(v))
	}
	if len(evs) != 4 || !strings.Contains(string(evs[3].Data), "burst 299") || !strings.Contains(string(evs[0].Data), "burst 296") {
		t.Fatalf("got %d events; want the newest 4 lines of the burst", len(evs))
	}
}
