package kubeproxy

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
)

// drainBackend answers /api/slow once release is closed and holds watches
// open until the client goes away.
func drainBackend(t *testing.T, release <-chan struct{}) (*Proxy, *fakeConn, <-chan string) {
	t.Helper()
	started := make(chan string, 8)
	_, cfg := tlsBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("watch") == "true" {
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
			started <- "watch"
			<-r.Context().Done()
			return
		}
		started <- "slow"
		select {
		case <-release:
			fmt.Fprint(w, "done")
		case <-r.Context().Done():
		}
	}))
	return newTestProxy(t, cfg, nil), newFakeConn(t), started
}

// until reads the proxy's messages into byID until done holds.
func until(t *testing.T, c *fakeConn, byID map[string][]*protocol.Envelope, done func() bool) {
	t.Helper()
	for !done() {
		env := c.next(t)
		byID[env.RequestID] = append(byID[env.RequestID], env)
	}
}

func last(byID map[string][]*protocol.Envelope, id string) (string, string) {
	envs := byID[id]
	if len(envs) == 0 {
		return "", ""
	}
	e := envs[len(envs)-1]
	var p struct {
		Error string `json:"error"`
		Body  string `json:"body"`
	}
	_ = e.DecodePayload(&p)
	return e.Type, p.Error + p.Body
}

func TestDrainLetsPlainRequestsFinishEndsLongLivedOnesAndJoinsItsGoroutines(t *testing.T) {
	release := make(chan struct{})
	p, c, started := drainBackend(t, release)
	send(t, p, c, protocol.TypeProxyRequest, "plain", protocol.ProxyRequest{Path: "/api/slow"})
	send(t, p, c, protocol.TypeProxyRequest, "watch", protocol.ProxyRequest{Path: "/api/v1/pods", Query: "watch=true", SupportsResponseStreaming: true})
	<-started
	<-started

	drained := make(chan struct{})
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		p.Drain(ctx)
		close(drained)
	}()
	byID := map[string][]*protocol.Envelope{}
	until(t, c, byID, func() bool { typ, _ := last(byID, "watch"); return typ == protocol.TypeProxyResponseAbort })
	if _, msg := last(byID, "watch"); !strings.Contains(msg, "shutting down") {
		t.Fatalf("the watch ended with %q; want the agent's shutdown named", msg)
	}
	send(t, p, c, protocol.TypeProxyRequest, "late", protocol.ProxyRequest{Path: "/api/slow"})
	until(t, c, byID, func() bool { return len(byID["late"]) > 0 })
	if typ, msg := last(byID, "late"); typ != protocol.TypeProxyError || !strings.Contains(msg, "shutting down") {
		t.Fatalf("a request during the drain got %s %q; want proxy_error naming the shutdown", typ, msg)
	}
	select {
	case <-drained:
		t.Fatal("Drain returned while a plain request was still running")
	default:
	}

	close(release)
	until(t, c, byID, func() bool { return len(byID["plain"]) > 0 })
	select {
	case <-drained:
	case <-time.After(10 * time.Second):
		t.Fatal("Drain did not return after the last request finished")
	}
	if typ, body := last(byID, "plain"); typ != protocol.TypeProxyResponse || body == "" {
		t.Fatalf("the plain request got %s %q; want its proxy_response", typ, body)
	}
	if p.InFlight() != 0 {
		t.Fatalf("%d still in flight after Drain", p.InFlight())
	}
}

func TestDrainIsBoundedAndCancelsWhatIsLeftWithAMessage(t *testing.T) {
	p, c, started := drainBackend(t, make(chan struct{})) // never released
	send(t, p, c, protocol.TypeProxyRequest, "stuck", protocol.ProxyRequest{Path: "/api/slow"})
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	p.Drain(ctx) // returns only once the cancelled call's goroutine ended
	byID := map[string][]*protocol.Envelope{}
	until(t, c, byID, func() bool { return len(byID["stuck"]) > 0 })
	if typ, msg := last(byID, "stuck"); typ != protocol.TypeProxyError || !strings.Contains(msg, "shutting down") {
		t.Fatalf("the request left at the end of the drain got %s %q; want proxy_error naming the shutdown", typ, msg)
	}
	if p.InFlight() != 0 {
		t.Fatalf("%d still in flight after Drain", p.InFlight())
	}
}
