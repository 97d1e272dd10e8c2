package dashboard

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
)

func droppedCount(f *fixture, reason string) float64 {
	mfs, _ := f.reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != "pipeops_agent_dashboard_viewers_dropped_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == reason {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

func TestHubKeepsOnlyTheLatestStatusForAViewerThatLags(t *testing.T) {
	h := newHub(2, 10, 10, time.Unix(0, 0))
	v, _, _ := h.subscribe("", nil)
	for i := 0; i < 100; i++ {
		h.publish(EventStatus, []byte(`{}`), time.Unix(0, 0))
	}
	h.publish(EventLog, []byte(`"l"`), time.Unix(0, 0))
	last := h.publish(EventStatus, []byte(`{}`), time.Unix(0, 0))
	<-v.wake
	evs, closed := h.take(v)
	if closed || len(evs) != 2 || evs[0].Type != EventLog || evs[1] != last {
		t.Fatalf("pending = %d events (closed %v); want the log line then only the newest status", len(evs), closed)
	}
}

func TestHubDropsAViewerThatFallsAFullBufferOfLogLinesBehind(t *testing.T) {
	h := newHub(2, 10, 10, time.Unix(0, 0))
	var reasons []string
	h.onDrop = func(r string) { reasons = append(reasons, r) }
	unblocked := false
	slow, _, _ := h.subscribe("", func() { unblocked = true })
	fast, _, _ := h.subscribe("", nil)
	for i := 0; i < 3; i++ {
		h.publish(EventLog, []byte(`"l"`), time.Unix(0, 0))
		if evs, _ := h.take(fast); len(evs) != 1 {
			t.Fatalf("fast viewer got %d events; want 1", len(evs))
		}
	}
	if _, ok := <-slow.wake; ok {
		<-slow.wake // the signal was pending; the channel must be closed next
	}
	if _, closed := h.take(slow); !closed || h.closedReason(slow) != dropSlow {
		t.Fatalf("slow viewer not dropped after a full buffer (reason %q)", h.closedReason(slow))
	}
	if !unblocked || len(reasons) != 1 || reasons[0] != dropSlow {
		t.Fatalf("drop did not unblock the writer or count it: unblocked=%v reasons=%v", unblocked, reasons)
	}
	if h.count() != 1 {
		t.Fatalf("viewers = %d; want the fast one only", h.count())
	}
}

// TestSSEViewerThatStopsReadingIsDroppedWhileOthersStay runs real sockets:
// a client that never reads fills the kernel buffers, the agent's write
// blocks past WriteTimeout and the viewer is dropped; a reading viewer stays.
func TestSSEViewerThatStopsReadingIsDroppedWhileOthersStay(t *testing.T) {
	big := strings.Repeat("x", 128<<10)
	f := newFixture(t, Options{EnableSSE: true, Interval: 5 * time.Millisecond, WriteTimeout: 500 * time.Millisecond,
		Snapshot: func(context.Context) apitype.StatusResponse {
			return apitype.StatusResponse{AgentID: "a", NotReady: []string{big}}
		}})
	healthy := openSSE(t, f.http.URL+"/api/realtime/events", nil)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // keep reading, as a browser does
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := healthy.br.ReadString('\n'); err != nil {
				return
			}
		}
	}()
	defer func() { close(stop); healthy.resp.Body.Close(); wg.Wait() }()

	conn, err := net.Dial("tcp", f.http.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.(*net.TCPConn).SetReadBuffer(4096)
	fmt.Fprintf(conn, "GET /api/realtime/events HTTP/1.1\r\nHost: %s\r\n\r\n", f.http.Listener.Addr())
	eventually(t, "the stalled viewer to be dropped as slow", func() bool { return droppedCount(f, dropSlow) >= 1 })
	eventually(t, "only the reading viewer to remain", func() bool { return f.srv.hub.count() == 1 })
	if got := droppedCount(f, dropSlow); got != 1 {
		t.Fatalf("dropped = %v; want exactly the stalled viewer", got)
	}
}

func TestOneSharedProducerServesEveryViewer(t *testing.T) {
	f := newFixture(t, Options{EnableSSE: true, Interval: 20 * time.Millisecond})
	const viewers, each = 20, 5
	readers := make([]*sseReader, viewers)
	for i := range readers {
		readers[i] = openSSE(t, f.http.URL+"/api/realtime/events", nil)
	}
	seen := make([]map[string]bool, viewers)
	for i, r := range readers {
		seen[i] = map[string]bool{}
		for len(seen[i]) < each {
			if ev := r.nextEvent(t); ev.Type == EventStatus {
				seen[i][ev.ID] = true
			}
		}
	}
	calls := f.calls.Load()
	// Per-viewer production would need viewers*each snapshots.
	if calls >= viewers*each/2 {
		t.Fatalf("%d snapshots for %d viewers × %d events: the producer is not shared", calls, viewers, each)
	}
	if snaps := f.srv.hub.seq; uint64(calls) > snaps {
		t.Fatalf("%d snapshot calls but %d events published", calls, snaps)
	}
}

func TestViewersBeyondTheLimitAreRefused(t *testing.T) {
	f := newFixture(t, Options{EnableSSE: true, MaxViewers: 2})
	openSSE(t, f.http.URL+"/events", nil)
	openSSE(t, f.http.URL+"/events", nil)
	resp, err := http.Get(f.http.URL + "/events")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "too many") {
		t.Fatalf("third viewer: %d %s; want 503 too many", resp.StatusCode, body)
	}
}

func TestStoppingTheProducerEndsOpenStreams(t *testing.T) {
	s := New(Options{EnableSSE: true, Snapshot: func(context.Context) apitype.StatusResponse { return apitype.StatusResponse{} }})
	mux := http.NewServeMux()
	s.Register(mux.Handle)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	resp, err := http.Get(srv.URL + "/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	if _, err := br.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v; want nil on cancel", err)
	}
	if _, err := io.Copy(io.Discard, br); err != nil {
		t.Fatalf("stream did not end cleanly: %v", err)
	}
	if r, err := http.Get(srv.URL + "/events"); err == nil {
		r.Body.Close()
		if r.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("new stream after stop = %d; want 503", r.StatusCode)
		}
	}
}
