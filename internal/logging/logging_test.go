package logging

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestJournalModePrefixesPriorityAndDropsTime(t *testing.T) {
	var buf bytes.Buffer
	yes := true
	log := New(Options{Level: slog.LevelDebug, Out: &buf, Journal: &yes}).With(KeyComponent, "test")
	log.Error("boom")
	log.Warn("careful")
	log.Info("hello")
	log.Debug("detail")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	want := []string{"<3>", "<4>", "<6>", "<7>"}
	if len(lines) != len(want) {
		t.Fatalf("got %d lines; want %d:\n%s", len(lines), len(want), buf.String())
	}
	for i, l := range lines {
		if !strings.HasPrefix(l, want[i]) {
			t.Errorf("line %d = %q; want prefix %s", i, l, want[i])
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l[3:]), &m); err != nil {
			t.Fatalf("line %d is not JSON after the prefix: %v", i, err)
		}
		if _, ok := m["time"]; ok {
			t.Errorf("line %d has a time key; journald stamps lines itself", i)
		}
		if m["component"] != "test" {
			t.Errorf("line %d lost the component attribute: %v", i, m)
		}
	}
}

func TestSinkReceivesOnlyWarnAndAbove(t *testing.T) {
	var got []string
	log := New(Options{Level: slog.LevelDebug, Format: FormatJSON, Out: &bytes.Buffer{}, Sink: func(r slog.Record) {
		got = append(got, r.Message)
	}})
	log.Info("quiet")
	log.Warn("w")
	log.Error("e")
	if strings.Join(got, ",") != "w,e" {
		t.Fatalf("sink got %v; want [w e]", got)
	}
}

func TestLimiterLogsOnceThenSummarises(t *testing.T) {
	now := time.Unix(0, 0)
	l := NewLimiter(5*time.Minute, func() time.Time { return now })
	if ok, _ := l.Allow("dial refused"); !ok {
		t.Fatal("first occurrence must be logged")
	}
	for range 3 {
		if ok, _ := l.Allow("dial refused"); ok {
			t.Fatal("repeat within the interval must be suppressed")
		}
	}
	if ok, _ := l.Allow("tls error"); !ok {
		t.Fatal("a distinct failure must be logged at once")
	}
	now = now.Add(5 * time.Minute)
	ok, n := l.Allow("dial refused")
	if !ok || n != 3 {
		t.Fatalf("Allow after interval = %v, %d; want true, 3", ok, n)
	}
}
