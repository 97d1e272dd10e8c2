package kubeproxy

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/logging"
	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
)

// bodyQueue is how many request-body chunks may wait for the backend; with
// chunks of a few tens of KiB this bounds a request's body memory to a few MiB.
const bodyQueue = 64

// bodyStall is how long the reader goroutine waits for room in a full body
// pipe before failing the request: the wait stalls the whole connection, so
// it must be short.
const bodyStall = 10 * time.Second

// bodyPipe carries a streamed request body (§6.2 mode 2) from the
// connection's reader goroutine to the backend call. Writes and the final
// close happen only on the reader goroutine, reads only in the transport.
type bodyPipe struct {
	ch     chan []byte
	ctx    context.Context
	cur    []byte
	closed bool // reader goroutine only
}

func newBodyPipe(ctx context.Context) *bodyPipe {
	return &bodyPipe{ch: make(chan []byte, bodyQueue), ctx: ctx}
}

// Read implements io.Reader for the backend request.
func (b *bodyPipe) Read(p []byte) (int, error) {
	for len(b.cur) == 0 {
		select {
		case c, ok := <-b.ch:
			if !ok {
				return 0, io.EOF
			}
			b.cur = c
		case <-b.ctx.Done():
			return 0, context.Cause(b.ctx)
		}
	}
	n := copy(p, b.cur)
	b.cur = b.cur[n:]
	return n, nil
}

// Close is a no-op: the transport closes request bodies when it is done.
func (b *bodyPipe) Close() error { return nil }

// write queues one chunk, waiting at most bodyStall for room.
func (b *bodyPipe) write(data []byte) error {
	if b.closed {
		return fmt.Errorf("chunk after proxy_request_stream_end")
	}
	select {
	case b.ch <- data:
		return nil
	default:
	}
	t := time.NewTimer(bodyStall)
	defer t.Stop()
	select {
	case b.ch <- data:
		return nil
	case <-b.ctx.Done():
		return context.Cause(b.ctx)
	case <-t.C:
		return fmt.Errorf("request body stalled: the backend read nothing for %s", bodyStall)
	}
}

// finish marks the end of the body (proxy_request_stream_end).
func (b *bodyPipe) finish() {
	if !b.closed {
		b.closed = true
		close(b.ch)
	}
}

// requestChunk appends a proxy_request_chunk to its call's body.
func (p *Proxy) requestChunk(c protocol.Conn, env *protocol.Envelope) {
	cl := p.lookupCall(c, env.RequestID)
	if cl == nil || cl.body == nil {
		p.log.Debug("request chunk for no streamed request", logging.KeyRequestID, env.RequestID)
		return
	}
	var chunk protocol.ProxyRequestChunk
	if err := env.DecodePayload(&chunk); err != nil {
		cl.cancel(fmt.Errorf("bad proxy_request_chunk: %w", err))
		return
	}
	data, err := chunk.Bytes()
	if err != nil {
		cl.cancel(fmt.Errorf("bad proxy_request_chunk: %w", err))
		return
	}
	p.m.bytesIn(len(data))
	if err := cl.body.write(data); err != nil {
		cl.cancel(err)
	}
}

// requestEnd ends a streamed body.
func (p *Proxy) requestEnd(c protocol.Conn, env *protocol.Envelope) {
	if cl := p.lookupCall(c, env.RequestID); cl != nil && cl.body != nil {
		cl.body.finish()
	}
}

func (p *Proxy) lookupCall(c protocol.Conn, id string) *call {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.calls[callKey{c.Generation(), id}]
}
