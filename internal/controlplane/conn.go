package controlplane

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pipeops/pipeops-vm-agent/internal/health"
	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
	"github.com/pipeops/pipeops-vm-agent/internal/wsconn"
)

// Connection modes.
const (
	ModeController = "controller"
	ModeGateway    = "gateway"
)

// ErrConnClosed is returned by sends on a connection that has ended.
var ErrConnClosed = errors.New("control-plane connection closed")

// frame kinds queued to the writer besides text and binary messages.
const (
	framePing  = websocket.PingMessage
	framePong  = websocket.PongMessage
	frameClose = websocket.CloseMessage
)

const (
	writeTimeout = 30 * time.Second // per JSON or binary message, then cleared (§2)
	pingDeadline = 60 * time.Second
	closeTimeout = 5 * time.Second
)

type outFrame struct {
	kind int
	data []byte
	more [][]byte   // further messages of the same kind, written right after data (SendBatch)
	done chan error // nil for fire-and-forget control frames
}

// conn is one connection generation. It implements protocol.Conn. It owns exactly
// one reader goroutine, one writer goroutine and one pinger.
type conn struct {
	gen    uint64
	mode   string
	url    string
	ws     *websocket.Conn
	bc     *wsconn.Conn // the coalescing layer under ws (nil: every frame is its own write)
	client *Client

	ctx    context.Context
	cancel context.CancelFunc
	out    chan outFrame

	closeOnce sync.Once
	errMu     sync.Mutex
	err       error

	mu      sync.Mutex
	sink    func([]byte)
	bodies  map[string]chan []byte
	regID   string
	regCh   chan *protocol.Envelope
	unknown map[string]bool // types already answered with protocol_fallback

	reregister chan string // "error: not registered / cluster not found" (§8.6)
	binActive  atomic.Bool
	lastRecv   atomic.Int64 // unix nanoseconds of the last pong or message
	// dispatchLoop watches the handlers run on the reader goroutine
	// (the proxy's dispatch among them); set by the reader only.
	dispatchLoop *health.Loop

	// owned joins every goroutine of this generation: reader, writer,
	// pinger, connect hooks and the small senders the reader starts. A
	// goroutine is added only by the Run goroutine before close, or by one
	// of them while it still counts, so the count never grows from zero
	// during Wait.
	owned sync.WaitGroup

	// metricIn and metricOut are the byte counters, looked up once.
	metricIn, metricOut prometheus.Counter
}

func newConn(parent context.Context, c *Client, gen uint64, mode, url string, ws *websocket.Conn) *conn {
	ctx, cancel := context.WithCancel(parent)
	return &conn{
		gen: gen, mode: mode, url: url, ws: ws, bc: wsconn.Find(ws.NetConn()), client: c, ctx: ctx, cancel: cancel,
		out: make(chan outFrame, 16), bodies: map[string]chan []byte{}, unknown: map[string]bool{},
		reregister: make(chan string, 1),
		metricIn:   c.metrics.bytes.WithLabelValues("in"), metricOut: c.metrics.bytes.WithLabelValues("out"),
	}
}

// start launches the reader, writer and pinger.
func (cn *conn) start(readLimit int64, readTimeout, pingEvery time.Duration) {
	cn.ws.SetReadLimit(readLimit)
	extend := func() {
		cn.lastRecv.Store(time.Now().UnixNano())
		_ = cn.ws.SetReadDeadline(time.Now().Add(readTimeout))
	}
	extend()
	cn.ws.SetPongHandler(func(string) error { extend(); return nil })
	// CP pings get a pong through the single writer; they do not extend the deadline (§2).
	cn.ws.SetPingHandler(func(data string) error {
		select {
		case cn.out <- outFrame{kind: framePong, data: []byte(data)}:
		default:
		}
		return nil
	})
	if cn.client.active != nil {
		// HA: gorilla echoes a close frame from its reader, outside the
		// single writer; a leader whose lease may have passed sends not
		// even that.
		echo := cn.ws.CloseHandler()
		cn.ws.SetCloseHandler(func(code int, text string) error {
			if !cn.client.isActive() {
				return nil
			}
			return echo(code, text)
		})
	}
	cn.goOwned(cn.writeLoop)
	cn.goOwned(func() { cn.readLoop(extend) })
	cn.goOwned(func() { cn.pingLoop(pingEvery) })
}

// goOwned runs fn in a goroutine that close waits for.
func (cn *conn) goOwned(fn func()) {
	cn.owned.Add(1)
	go func() {
		defer cn.owned.Done()
		fn()
	}()
}

// sendLater sends one reply off the reader goroutine (the writer may be
// busy), owned by this connection.
func (cn *conn) sendLater(typ, requestID string, payload any) {
	cn.goOwned(func() {
		ctx, cancel := context.WithTimeout(cn.ctx, writeTimeout)
		defer cancel()
		_ = cn.Send(ctx, typ, requestID, payload)
	})
}

func (cn *conn) Generation() uint64        { return cn.gen }
func (cn *conn) Context() context.Context  { return cn.ctx }
func (cn *conn) Done() <-chan struct{}     { return cn.ctx.Done() }
func (cn *conn) BinaryChannelActive() bool { return cn.binActive.Load() }
func (cn *conn) Send(ctx context.Context, typ, requestID string, payload any) error {
	b, err := protocol.Encode(typ, requestID, payload, time.Now())
	if err != nil {
		return err
	}
	return cn.write(ctx, websocket.TextMessage, b)
}

var _ protocol.BatchSender = (*conn)(nil)

// SendBatch writes several JSON envelopes, in order, as one queued frame of
// the single writer: one hand-off and usually one socket write for all.
func (cn *conn) SendBatch(ctx context.Context, msgs ...protocol.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	now := time.Now()
	out := make([][]byte, len(msgs))
	for i, m := range msgs {
		b, err := protocol.Encode(m.Type, m.RequestID, m.Payload, now)
		if err != nil {
			return err
		}
		out[i] = b
	}
	return cn.writeFrame(ctx, outFrame{kind: websocket.TextMessage, data: out[0], more: out[1:]})
}

func (cn *conn) SendBinary(ctx context.Context, data []byte) error {
	return cn.write(ctx, websocket.BinaryMessage, data)
}

func (cn *conn) write(ctx context.Context, kind int, data []byte) error {
	return cn.writeFrame(ctx, outFrame{kind: kind, data: data})
}

func (cn *conn) writeFrame(ctx context.Context, f outFrame) error {
	f.done = make(chan error, 1)
	select {
	case cn.out <- f:
	case <-cn.ctx.Done():
		return ErrConnClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-f.done:
		return err
	case <-cn.ctx.Done():
		select {
		case err := <-f.done: // written just before the end
			return err
		default:
			return ErrConnClosed
		}
	}
}

// writeLoop is the connection's only writer. Consecutive queued frames
// are coalesced: each goes into the buffered layer under ws, which is
// flushed to the socket when the queue is momentarily empty (or the buffer
// fills), with the latest deadline of the batch's frames; a close frame is
// flushed at once. A frame's done reports its write into that layer.
func (cn *conn) writeLoop() {
	lp := cn.client.health.Loop("link-writer")
	defer lp.Done()
	var flushBy time.Time // zero: nothing pending
	for {
		var f outFrame
		select {
		case <-cn.ctx.Done():
			return
		case f = <-cn.out:
			lp.Busy()
		default:
			if !flushBy.IsZero() {
				lp.Busy()
				if !cn.client.isActive() {
					cn.fail(ErrInactive) // the batch stays unsent
					return
				}
				err := cn.bc.Flush(flushBy)
				flushBy = time.Time{}
				if err != nil {
					cn.fail(fmt.Errorf("write to control plane: %w", err))
					return
				}
			}
			lp.Idle()
			select {
			case <-cn.ctx.Done():
				return
			case f = <-cn.out:
				lp.Busy()
			}
		}
		if !cn.client.isActive() {
			// HA: the lease may be another agent's by now. Not a byte more
			// on this connection, not even a close frame.
			if f.done != nil {
				f.done <- ErrInactive
			}
			cn.fail(ErrInactive)
			return
		}
		if cn.bc != nil {
			cn.bc.Begin()
		}
		var err error
		var deadline time.Time
		switch f.kind {
		case websocket.TextMessage, websocket.BinaryMessage:
			deadline = time.Now().Add(writeTimeout)
			_ = cn.ws.SetWriteDeadline(deadline)
			n := len(f.data)
			err = cn.ws.WriteMessage(f.kind, f.data)
			for _, m := range f.more {
				if err != nil {
					break
				}
				n += len(m)
				err = cn.ws.WriteMessage(f.kind, m)
			}
			_ = cn.ws.SetWriteDeadline(time.Time{})
			if err == nil {
				cn.metricOut.Add(float64(n))
			}
		case framePing:
			deadline = time.Now().Add(pingDeadline)
			err = cn.ws.WriteControl(websocket.PingMessage, nil, deadline)
		case framePong:
			deadline = time.Now().Add(closeTimeout)
			err = cn.ws.WriteControl(websocket.PongMessage, f.data, deadline)
		case frameClose:
			deadline = time.Now().Add(closeTimeout)
			err = cn.ws.WriteControl(websocket.CloseMessage, f.data, deadline)
		}
		if cn.bc != nil && err == nil {
			if deadline.After(flushBy) {
				flushBy = deadline
			}
			if f.kind == frameClose {
				err = cn.bc.Flush(flushBy)
				flushBy = time.Time{}
			}
		}
		if f.done != nil {
			f.done <- err
		}
		if err != nil {
			cn.fail(fmt.Errorf("write to control plane: %w", err))
			return
		}
	}
}

// silentPings is how many ping intervals may pass with neither a pong nor
// a message before the connection counts as silently dead (a blackhole that
// keeps the socket open): 25 s at the 10 s interval, well inside the 60 s
// read deadline. The control plane MUST answer pings (§2), so a healthy
// idle link hears a pong every interval.
const silentPings = 2.5

func (cn *conn) pingLoop(every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	silence := time.Duration(silentPings * float64(every))
	check := time.NewTimer(silence)
	defer check.Stop()
	for {
		select {
		case <-cn.ctx.Done():
			return
		case <-check.C:
			quiet := time.Since(time.Unix(0, cn.lastRecv.Load()))
			if quiet >= silence {
				cn.fail(fmt.Errorf("no pong or message from the control plane for %s: the connection is silently dead", quiet.Round(time.Second)))
				return
			}
			check.Reset(silence - quiet)
		case <-t.C:
			// A failed ping write fails the connection in the writer.
			select {
			case cn.out <- outFrame{kind: framePing}:
			case <-cn.ctx.Done():
				return
			}
		}
	}
}

var _ protocol.BinaryReleaser = (*conn)(nil)

// ReleaseBinary takes back a binary frame the sink is done with.
func (cn *conn) ReleaseBinary(data []byte) { wsconn.Release(data) }

func (cn *conn) readLoop(extend func()) {
	lp := cn.client.health.Loop("link-reader")
	defer lp.Done()
	cn.dispatchLoop = cn.client.health.Loop("dispatch")
	defer cn.dispatchLoop.Done()
	// Large binary frames for the binary channel (yamux) are handed over in
	// the read buffer itself; the sink releases them once read (§7.1 bulk
	// data, one copy less per byte).
	toSink := func(kind int) bool { return kind == websocket.BinaryMessage && cn.binActive.Load() }
	for {
		lp.Idle()
		kind, data, err := wsconn.ReadMessageOwned(cn.ws, toSink)
		if err != nil {
			cn.fail(fmt.Errorf("read from control plane: %w", err))
			return
		}
		lp.Busy()
		extend()
		cn.metricIn.Add(float64(len(data)))
		if kind == websocket.BinaryMessage {
			cn.handleBinary(data)
			continue
		}
		cn.client.handleText(cn, data)
	}
}

// handleBinary routes a binary frame: to yamux when active, else to an
// awaited legacy body_binary frame (§6.2), else it is a JSON envelope (§3).
func (cn *conn) handleBinary(data []byte) {
	cn.mu.Lock()
	sink := cn.sink
	cn.mu.Unlock()
	if sink != nil {
		sink(data)
		return
	}
	if len(data) >= 2 {
		n := int(binary.BigEndian.Uint16(data))
		if len(data) >= 2+n {
			id := string(data[2 : 2+n])
			cn.mu.Lock()
			ch, ok := cn.bodies[id]
			delete(cn.bodies, id)
			cn.mu.Unlock()
			if ok {
				ch <- data[2+n:]
				return
			}
		}
	}
	cn.client.handleText(cn, data)
}

// ExpectBinaryBody reserves the next binary frame carrying requestID.
func (cn *conn) ExpectBinaryBody(requestID string) (<-chan []byte, func()) {
	ch := make(chan []byte, 1)
	cn.mu.Lock()
	cn.bodies[requestID] = ch
	cn.mu.Unlock()
	return ch, func() {
		cn.mu.Lock()
		if cn.bodies[requestID] == ch {
			delete(cn.bodies, requestID)
		}
		cn.mu.Unlock()
	}
}

// StartBinaryChannel hands every later binary frame to sink.
func (cn *conn) StartBinaryChannel(sink func([]byte)) {
	cn.mu.Lock()
	if cn.sink == nil {
		cn.sink = sink
		cn.binActive.Store(true)
	}
	cn.mu.Unlock()
}

// expectRegister arms the wait for register_success / register_in_progress
// / error with requestID.
func (cn *conn) expectRegister(requestID string) <-chan *protocol.Envelope {
	ch := make(chan *protocol.Envelope, 8)
	cn.mu.Lock()
	cn.regID, cn.regCh = requestID, ch
	cn.mu.Unlock()
	return ch
}

// deliverRegister hands a registration reply to the waiter; false when
// nothing waits for it.
func (cn *conn) deliverRegister(env *protocol.Envelope) bool {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	if cn.regCh == nil || (env.RequestID != cn.regID && env.Type != protocol.TypeRegisterInProgress) {
		return false
	}
	select {
	case cn.regCh <- env:
	default:
	}
	return true
}

// firstUnknown reports whether typ is seen for the first time on this connection.
func (cn *conn) firstUnknown(typ string) bool {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	if cn.unknown[typ] || len(cn.unknown) > 1024 {
		return false
	}
	cn.unknown[typ] = true
	return true
}

func (cn *conn) signalReregister(reason string) {
	select {
	case cn.reregister <- reason:
	default:
	}
}

// fail ends the connection after an error, without a close frame.
func (cn *conn) fail(err error) {
	cn.errMu.Lock()
	if cn.err == nil {
		cn.err = err
	}
	cn.errMu.Unlock()
	cn.closeOnce.Do(func() {
		cn.cancel()
		_ = cn.ws.Close()
	})
}

// close ends the connection with a close frame (1000 by default, 5 s
// deadline), then closes the socket, cancels everything of this
// generation and waits for its goroutines. Only the Run goroutine calls it.
func (cn *conn) close(code int, text string) {
	defer cn.owned.Wait()
	cn.errMu.Lock()
	if cn.err == nil {
		cn.err = fmt.Errorf("closed by the agent: %s", text)
	}
	cn.errMu.Unlock()
	cn.closeOnce.Do(func() {
		f := outFrame{kind: frameClose, data: websocket.FormatCloseMessage(code, text), done: make(chan error, 1)}
		t := time.NewTimer(closeTimeout)
		defer t.Stop()
		select {
		case cn.out <- f:
			select {
			case <-f.done:
			case <-cn.ctx.Done():
			case <-t.C:
			}
		case <-cn.ctx.Done():
		case <-t.C:
		}
		cn.cancel()
		_ = cn.ws.Close()
	})
}

// Err is why the connection ended (nil while it is up).
func (cn *conn) Err() error {
	cn.errMu.Lock()
	defer cn.errMu.Unlock()
	return cn.err
}
