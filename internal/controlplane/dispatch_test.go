package controlplane

import (
	"context"
	"encoding/json"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/devplane"
	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

// panicky is a handler with a bug.
type panicky struct{ calls chan string }

func (panicky) Types() []string { return []string{"proxy_request"} }
func (p panicky) Handle(c protocol.Conn, env *protocol.Envelope) {
	p.calls <- env.RequestID
	if env.RequestID == "boom" {
		panic("handler bug")
	}
}

func connected(t *testing.T, cl *fakeCluster, tweak func(*agent)) (*plane, *agent, *devplane.Session) {
	t.Helper()
	p := startPlane(t)
	a := newAgent(t, testConfig(p.url()), nil, cl, nil)
	if tweak != nil {
		tweak(a)
	}
	a.start(t)
	testbin.Eventually(t, 5*time.Second, "first heartbeat", heartbeating(p, devplane.KindGateway, 1))
	return p, a, p.srv.Session(a.c.ClusterID())
}

func TestUnknownTypesGetOneProtocolFallbackEach(t *testing.T) {
	p := startPlane(t)
	var mu sync.Mutex
	var got []map[string]any
	p.srv.HandleType(protocol.TypeProtocolFallback, func(_ *devplane.Session, env *protocol.Envelope) {
		var m map[string]any
		_ = json.Unmarshal(env.Payload, &m)
		if m["unknown_type"] == protocol.TypeGatewayHello {
			return // the devplane's own hello: no tunnel handler in this test
		}
		mu.Lock()
		got = append(got, m)
		mu.Unlock()
	})
	a := newAgent(t, testConfig(p.url()), nil, &fakeCluster{version: "v1.36.3"}, nil)
	a.start(t)
	testbin.Eventually(t, 5*time.Second, "first heartbeat", heartbeating(p, devplane.KindGateway, 1))
	sess := p.srv.Session(a.c.ClusterID())
	ctx := context.Background()
	for _, typ := range []string{"cluster_config", "cluster_config", "secrets", "cluster_config"} {
		if err := sess.Send(ctx, typ, "r-90", nil); err != nil {
			t.Fatal(err)
		}
	}
	testbin.Eventually(t, 5*time.Second, "two fallbacks", func() bool { mu.Lock(); defer mu.Unlock(); return len(got) >= 2 })
	// One more unknown type is the barrier: the agent reads messages in
	// order and decides on a fallback as it reads each, so a third fallback
	// for the types above would have been sent before the barrier's.
	if err := sess.Send(ctx, "barrier", "r-91", nil); err != nil {
		t.Fatal(err)
	}
	testbin.Eventually(t, 5*time.Second, "the barrier's fallback", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return slices.ContainsFunc(got, func(m map[string]any) bool { return m["unknown_type"] == "barrier" })
	})
	mu.Lock()
	defer mu.Unlock()
	got = slices.DeleteFunc(got, func(m map[string]any) bool { return m["unknown_type"] == "barrier" })
	types := map[any]bool{}
	for _, g := range got {
		types[g["unknown_type"]] = true
	}
	if len(got) != 2 || !types["cluster_config"] || !types["secrets"] {
		t.Fatalf("fallbacks = %v; want one per type", got)
	}
	if got[0]["fallback_mode"] != "legacy_proxy" || got[0]["protocol_version"] != "1.0" || got[0]["original_request_id"] != "r-90" ||
		len(got[0]["supported_types"].([]any)) == 0 {
		t.Fatalf("fallback payload = %v", got[0])
	}
}

func TestMalformedMessagesAreCountedAndTheConnectionStays(t *testing.T) {
	p, a, sess := connected(t, &fakeCluster{version: "v1.36.3"}, nil)
	gen := a.c.current().gen
	for i := 0; i < 5; i++ {
		if err := p.srv.SendGarbage(context.Background(), a.c.ClusterID()); err != nil {
			t.Fatal(err)
		}
	}
	// Also: valid JSON that is not an envelope, a binary frame that is not JSON, a bad payload.
	_ = sess.SendBinary(context.Background(), []byte{0xff, 0x00, 0x01})
	_ = sess.Send(context.Background(), protocol.TypeRegisterSuccess, "nobody-waits", "not an object")
	testbin.Eventually(t, 5*time.Second, "malformed counter", func() bool {
		return metricValue(t, a.reg, "pipeops_agent_controlplane_malformed_messages_total") >= 6
	})
	beats, _ := onlyCluster(p)
	testbin.Eventually(t, 5*time.Second, "more heartbeats on the same connection", heartbeating(p, devplane.KindGateway, beats.Heartbeats+2))
	if a.c.current().gen != gen {
		t.Fatal("garbage caused a reconnect")
	}
}

func TestAPanickingHandlerIsRecoveredAndLaterMessagesStillArrive(t *testing.T) {
	h := panicky{calls: make(chan string, 4)}
	_, a, sess := connected(t, &fakeCluster{version: "v1.36.3"}, func(a *agent) { a.c.Register(h) })
	ctx := context.Background()
	_ = sess.Send(ctx, protocol.TypeProxyRequest, "boom", nil)
	_ = sess.Send(ctx, protocol.TypeProxyRequest, "after", nil)
	for _, want := range []string{"boom", "after"} {
		select {
		case got := <-h.calls:
			if got != want {
				t.Fatalf("handler saw %s; want %s", got, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("handler never saw %s", want)
		}
	}
	testbin.Eventually(t, 2*time.Second, "panic counted", func() bool {
		return metricValue(t, a.reg, "pipeops_agent_controlplane_handler_panics_total") == 1
	})
}

func TestApplicationPingIsAnsweredWithPongAndLegacyTunnelsAreRefused(t *testing.T) {
	_, _, sess := connected(t, &fakeCluster{version: "v1.36.3"}, nil)
	ctx := context.Background()
	for _, tc := range []struct{ send, reqID, want string }{
		{protocol.TypePing, "p-1", protocol.TypePong},
		{protocol.TypeTCPTunnelStart, "t-5", protocol.TypeTCPTunnelClose},
	} {
		ch, cancel := sess.Subscribe(tc.reqID)
		if err := sess.Send(ctx, tc.send, tc.reqID, nil); err != nil {
			t.Fatal(err)
		}
		select {
		case env := <-ch:
			if env.Type != tc.want {
				t.Fatalf("%s answered with %s; want %s", tc.send, env.Type, tc.want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no answer to %s", tc.send)
		}
		cancel()
	}
	// Legacy UDP data without a tunnel is ignored without a crash.
	_ = sess.Send(ctx, protocol.TypeUDPTunnelData, "", map[string]any{"tunnel_id": "x", "data": "!!"})
}

func TestTheBinaryChannelAndLegacyBodyFramesGoWhereTheyBelong(t *testing.T) {
	conns := make(chan protocol.Conn, 1)
	_, _, sess := connected(t, &fakeCluster{version: "v1.36.3"}, func(a *agent) {
		a.c.OnConnect(func(_ context.Context, c protocol.Conn) { conns <- c })
	})
	c := <-conns
	body, cancel := c.ExpectBinaryBody("r-1")
	defer cancel()
	ctx := context.Background()
	_ = sess.SendBinary(ctx, append([]byte{0, 3, 'r', '-', '1'}, "hello"...))
	select {
	case b := <-body:
		if string(b) != "hello" {
			t.Fatalf("body = %q", b)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("legacy body frame not delivered")
	}
	frames := make(chan []byte, 2)
	c.StartBinaryChannel(func(b []byte) { frames <- b })
	if !c.BinaryChannelActive() {
		t.Fatal("binary channel not active")
	}
	_ = sess.SendBinary(ctx, []byte("yamux bytes"))
	select {
	case b := <-frames:
		if string(b) != "yamux bytes" {
			t.Fatalf("frame = %q", b)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("binary frame not delivered to the sink")
	}
	got := make(chan []byte, 1)
	sess.SetBinaryHandler(func(b []byte) { got <- b })
	if err := c.SendBinary(ctx, []byte("to gateway")); err != nil {
		t.Fatal(err)
	}
	select {
	case b := <-got:
		if string(b) != "to gateway" {
			t.Fatalf("gateway got %q", b)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("agent binary frame not received")
	}
}
