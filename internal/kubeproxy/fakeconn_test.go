package kubeproxy

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
)

// fakeConn is a narrow stand-in for one control-plane connection: what the
// agent sends lands in out (bounded, so a slow test reader is backpressure).
type fakeConn struct {
	gen    uint64
	ctx    context.Context
	cancel context.CancelFunc
	out    chan *protocol.Envelope
	yamux  bool

	mu      sync.Mutex
	binary  map[string]chan []byte
	batches [][]string // the types of each SendBatch, in order
}

var (
	_ protocol.Conn        = (*fakeConn)(nil)
	_ protocol.BatchSender = (*fakeConn)(nil)
)

var errConnClosed = errors.New("fake connection closed")

func newFakeConn(t testing.TB) *fakeConn {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return &fakeConn{gen: 1, ctx: ctx, cancel: cancel, out: make(chan *protocol.Envelope, 4096), binary: map[string]chan []byte{}}
}

func (f *fakeConn) Send(ctx context.Context, typ, requestID string, payload any) error {
	if f.ctx.Err() != nil {
		return errConnClosed
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	b, err := protocol.Encode(typ, requestID, payload, time.Now())
	if err != nil {
		return err
	}
	env, err := protocol.Decode(b)
	if err != nil {
		return err
	}
	select {
	case f.out <- env:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-f.ctx.Done():
		return errConnClosed
	}
}

// SendBatch records the batch and sends its messages in order.
func (f *fakeConn) SendBatch(ctx context.Context, msgs ...protocol.Message) error {
	types := make([]string, len(msgs))
	for i, m := range msgs {
		types[i] = m.Type
	}
	f.mu.Lock()
	f.batches = append(f.batches, types)
	f.mu.Unlock()
	for _, m := range msgs {
		if err := f.Send(ctx, m.Type, m.RequestID, m.Payload); err != nil {
			return err
		}
	}
	return nil
}

func (f *fakeConn) batchTypes() [][]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([][]string(nil), f.batches...)
}

func (f *fakeConn) SendBinary(context.Context, []byte) error { return errors.New("not used") }
func (f *fakeConn) Generation() uint64                       { return f.gen }
func (f *fakeConn) Context() context.Context                 { return f.ctx }
func (f *fakeConn) StartBinaryChannel(func([]byte))          { f.yamux = true }
func (f *fakeConn) BinaryChannelActive() bool                { return f.yamux }

func (f *fakeConn) ExpectBinaryBody(id string) (<-chan []byte, func()) {
	ch := make(chan []byte, 1)
	f.mu.Lock()
	f.binary[id] = ch
	f.mu.Unlock()
	return ch, func() {
		f.mu.Lock()
		delete(f.binary, id)
		f.mu.Unlock()
	}
}

// deliverBinary plays the reader handing a body_binary frame over.
func (f *fakeConn) deliverBinary(id string, body []byte) bool {
	f.mu.Lock()
	ch := f.binary[id]
	f.mu.Unlock()
	if ch == nil {
		return false
	}
	ch <- body
	return true
}

// send plays one inbound control-plane message through the handler.
func send(t testing.TB, p *Proxy, c *fakeConn, typ, id string, payload any) {
	t.Helper()
	b, err := json.Marshal(payload)
	if err != nil {
		t.Fatal(err)
	}
	p.Handle(c, &protocol.Envelope{Type: typ, RequestID: id, Payload: b})
}

// next waits for the next outbound message.
func (f *fakeConn) next(t testing.TB) *protocol.Envelope {
	t.Helper()
	select {
	case env := <-f.out:
		return env
	case <-time.After(10 * time.Second):
		t.Fatal("no message from the proxy within 10s")
		return nil
	}
}

// expectNone asserts that nothing is sent for a while.
func (f *fakeConn) expectNone(t testing.TB, d time.Duration) {
	t.Helper()
	select {
	case env := <-f.out:
		t.Fatalf("unexpected %s %s", env.Type, env.Payload)
	case <-time.After(d):
	}
}

// response collects a whole response of either mode.
type response struct {
	Status  int
	Headers map[string][]string
	Body    []byte
	Err     string // proxy_error / proxy_response_abort
	Chunks  []int
	Types   []string
}

func (f *fakeConn) response(t testing.TB, id string) response {
	t.Helper()
	var r response
	for {
		env := f.next(t)
		if env.RequestID != id {
			t.Fatalf("message %s for %q; want %q", env.Type, env.RequestID, id)
		}
		r.Types = append(r.Types, env.Type)
		switch env.Type {
		case protocol.TypeProxyResponse:
			var p protocol.ProxyResponse
			mustDecode(t, env, &p)
			r.Status, r.Headers = p.Status, p.Headers
			r.Body = decodeBody(t, p.Body, p.Encoding)
			return r
		case protocol.TypeProxyResponseHeader:
			var p protocol.ProxyResponseHeader
			mustDecode(t, env, &p)
			r.Status, r.Headers = p.Status, p.Headers
		case protocol.TypeProxyResponseChunk:
			var p protocol.ProxyResponseChunk
			mustDecode(t, env, &p)
			b, err := base64.StdEncoding.DecodeString(p.Data)
			if err != nil || len(b) != p.Size || p.Encoding != "base64" {
				t.Fatalf("bad chunk: size %d, len %d, encoding %q, err %v", p.Size, len(b), p.Encoding, err)
			}
			r.Body = append(r.Body, b...)
			r.Chunks = append(r.Chunks, len(b))
		case protocol.TypeProxyResponseEnd:
			return r
		case protocol.TypeProxyError, protocol.TypeProxyResponseAbort:
			var p protocol.ErrorPayload
			mustDecode(t, env, &p)
			r.Err = p.Error
			return r
		default:
			t.Fatalf("unexpected %s", env.Type)
		}
	}
}

func mustDecode(t testing.TB, env *protocol.Envelope, v any) {
	t.Helper()
	if err := env.DecodePayload(v); err != nil {
		t.Fatal(err)
	}
}
