package dashboard

import (
	"bufio"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

// fixture is a dashboard running its producer behind a real HTTP server.
type fixture struct {
	srv   *Server
	http  *httptest.Server
	calls atomic.Int64
	reg   *prometheus.Registry
	state atomic.Value // link state string
}

func newFixture(t *testing.T, o Options) *fixture {
	t.Helper()
	f := &fixture{reg: prometheus.NewRegistry()}
	f.state.Store(apitype.LinkConnected)
	if o.Snapshot == nil {
		o.Snapshot = func(context.Context) apitype.StatusResponse {
			n := f.calls.Add(1)
			return apitype.StatusResponse{Version: "1.2.3", AgentID: "agent-test", ClusterName: "test",
				Link:  apitype.LinkStatus{State: f.state.Load().(string)},
				Proxy: apitype.ProxyStatus{Requests: n * 10}}
		}
	}
	if o.Interval == 0 {
		o.Interval = 20 * time.Millisecond
	}
	o.Registerer = f.reg
	f.srv = New(o)
	mux := http.NewServeMux()
	f.srv.Register(mux.Handle)
	f.http = httptest.NewServer(mux)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = f.srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		f.http.Close()
	})
	return f
}

// sseEvent is one parsed SSE frame (or comment).
type sseEvent struct {
	ID, Type, Data, Comment string
}

type sseReader struct {
	resp *http.Response
	br   *bufio.Reader
}

func openSSE(t *testing.T, url string, header http.Header) *sseReader {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s = %d", url, resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		t.Fatalf("Content-Type = %q", ct)
	}
	return &sseReader{resp: resp, br: bufio.NewReader(resp.Body)}
}

// next reads one frame: an event, a comment or the retry field.
func (r *sseReader) next(t *testing.T) sseEvent {
	t.Helper()
	var ev sseEvent
	got := false
	for {
		line, err := r.br.ReadString('\n')
		if err != nil {
			t.Fatalf("read SSE: %v", err)
		}
		line = strings.TrimSuffix(line, "\n")
		if line == "" {
			if got {
				return ev
			}
			continue
		}
		got = true
		field, val, _ := strings.Cut(line, ":")
		val = strings.TrimPrefix(val, " ")
		switch field {
		case "":
			ev.Comment = val
		case "id":
			ev.ID = val
		case "event":
			ev.Type = val
		case "data":
			if ev.Data != "" {
				ev.Data += "\n"
			}
			ev.Data += val
		case "retry":
			ev.Comment = "retry " + val
		}
	}
}

// nextEvent skips comments and returns the next real event.
func (r *sseReader) nextEvent(t *testing.T) sseEvent {
	t.Helper()
	for {
		if ev := r.next(t); ev.Type != "" {
			return ev
		}
	}
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testbin.Eventually(t, 10*time.Second, what, cond)
}
