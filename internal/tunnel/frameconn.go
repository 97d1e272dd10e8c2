package tunnel

import (
	"context"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
)

// maxQueued bounds the inbound bytes waiting for the yamux reader. When it
// is reached the sink blocks the WebSocket reader: backpressure, not growth.
// yamux drains it quickly (stream buffers are bounded by their windows).
const maxQueued = 8 << 20

// Binary is the part of a control-plane connection the adapter needs.
type Binary interface {
	SendBinary(ctx context.Context, data []byte) error
	Context() context.Context
}

// FrameConn is a net.Conn over the binary frames of a shared WebSocket
// (protocol.md §7.1): Sink receives every inbound binary frame, in order,
// and Write sends one binary frame per call through the connection's single
// writer. Frame boundaries carry no meaning. Deadlines are real: a Read or
// Write blocked past its deadline returns os.ErrDeadlineExceeded, also when
// the deadline is moved while it waits.
type FrameConn struct {
	bin Binary

	release func([]byte) // hands a frame back (protocol.BinaryReleaser), or drops it

	mu       sync.Mutex
	queue    [][]byte
	head     int // bytes of queue[0] already read
	queued   int
	closed   bool          // Close was called
	readable chan struct{} // signalled when data arrives or the state changes
	space    chan struct{} // signalled when the reader consumed data

	rd, wd  *deadline
	done    chan struct{} // closed by Close
	once    sync.Once
	writes  map[*int]context.CancelFunc // in-flight writes, cancelled by Close and the write deadline
	writeMu sync.Mutex
}

// NewFrameConn wraps bin. Call Sink for every inbound binary frame.
func NewFrameConn(bin Binary) *FrameConn {
	c := &FrameConn{bin: bin, readable: make(chan struct{}, 1), space: make(chan struct{}, 1),
		rd: newDeadline(), wd: newDeadline(), done: make(chan struct{}), writes: map[*int]context.CancelFunc{}}
	c.wd.onExpire = c.cancelWrites
	c.release = func([]byte) {}
	if r, ok := bin.(protocol.BinaryReleaser); ok {
		c.release = r.ReleaseBinary
	}
	return c
}

func (c *FrameConn) cancelWrites() {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	for _, cancel := range c.writes {
		cancel()
	}
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// Sink queues one inbound frame. It keeps data (the caller must not reuse
// it) and blocks while more than maxQueued bytes wait, until the reader
// catches up or the connection ends. A frame read to its end goes back to
// the connection when it takes frames back (protocol.BinaryReleaser).
// The queue counts what frames hold (their capacity), not only their bytes.
func (c *FrameConn) Sink(data []byte) {
	if len(data) == 0 {
		c.release(data)
		return
	}
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			c.release(data)
			return
		}
		if c.queued < maxQueued {
			c.queue = append(c.queue, data)
			c.queued += cap(data)
			c.mu.Unlock()
			signal(c.readable)
			return
		}
		c.mu.Unlock()
		select {
		case <-c.space:
		case <-c.done:
			return
		case <-c.bin.Context().Done():
			return
		}
	}
}

// Read reads queued inbound bytes. It returns io.EOF once the connection
// has ended and everything queued was read.
func (c *FrameConn) Read(b []byte) (int, error) {
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return 0, net.ErrClosed
		}
		if len(c.queue) > 0 {
			head := c.queue[0]
			n := copy(b, head[c.head:])
			var done []byte
			if c.head += n; c.head == len(head) {
				done, c.head = head, 0
				c.queue[0] = nil
				c.queue = c.queue[1:]
				c.queued -= cap(head)
			}
			c.mu.Unlock()
			if done != nil {
				c.release(done)
				signal(c.space)
			}
			return n, nil
		}
		c.mu.Unlock()
		if len(b) == 0 {
			return 0, nil
		}
		select {
		case <-c.readable:
		case <-c.rd.wait():
			return 0, os.ErrDeadlineExceeded
		case <-c.done:
			return 0, net.ErrClosed
		case <-c.bin.Context().Done():
			// The connection ended; deliver what is still queued, then EOF.
			c.mu.Lock()
			empty := len(c.queue) == 0
			c.mu.Unlock()
			if empty {
				return 0, io.EOF
			}
		}
	}
}

// Write sends b as one binary frame. SendBinary returns once the frame was
// written, so b is not retained.
func (c *FrameConn) Write(b []byte) (int, error) {
	select {
	case <-c.done:
		return 0, net.ErrClosed
	case <-c.wd.wait():
		return 0, os.ErrDeadlineExceeded
	default:
	}
	if len(b) == 0 {
		return 0, nil
	}
	ctx, cancel := context.WithCancel(c.bin.Context())
	key := new(int)
	c.writeMu.Lock()
	c.writes[key] = cancel
	c.writeMu.Unlock()
	defer func() {
		c.writeMu.Lock()
		delete(c.writes, key)
		c.writeMu.Unlock()
		cancel()
	}()
	// Re-check after registering: an expiry or Close in between would have
	// found nothing to cancel.
	select {
	case <-c.done:
		return 0, net.ErrClosed
	case <-c.wd.wait():
		return 0, os.ErrDeadlineExceeded
	default:
	}
	err := c.bin.SendBinary(ctx, b)
	switch {
	case err == nil:
		return len(b), nil
	case c.isClosed():
		return 0, net.ErrClosed
	case isClosedChan(c.wd.wait()):
		return 0, os.ErrDeadlineExceeded
	}
	return 0, err
}

func (c *FrameConn) isClosed() bool { return isClosedChan(c.done) }

func isClosedChan(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// Close ends the adapter (not the WebSocket, which carries other traffic).
func (c *FrameConn) Close() error {
	c.once.Do(func() {
		c.mu.Lock()
		c.closed = true
		queue := c.queue
		c.queue, c.queued, c.head = nil, 0, 0
		c.mu.Unlock()
		for _, f := range queue {
			c.release(f)
		}
		close(c.done)
		c.cancelWrites()
	})
	return nil
}

// LocalAddr and RemoteAddr are placeholders: the stream has no addresses.
func (c *FrameConn) LocalAddr() net.Addr  { return wsAddr("agent") }
func (c *FrameConn) RemoteAddr() net.Addr { return wsAddr("gateway") }

// SetDeadline sets both deadlines.
func (c *FrameConn) SetDeadline(t time.Time) error {
	c.rd.set(t)
	c.wd.set(t)
	return nil
}

// SetReadDeadline sets the read deadline; it also wakes a blocked Read.
func (c *FrameConn) SetReadDeadline(t time.Time) error { c.rd.set(t); return nil }

// SetWriteDeadline sets the write deadline; it also cancels a blocked Write.
func (c *FrameConn) SetWriteDeadline(t time.Time) error { c.wd.set(t); return nil }

type wsAddr string

func (a wsAddr) Network() string { return "websocket" }
func (a wsAddr) String() string  { return string(a) }

// deadline is a settable deadline whose channel closes when it passes, like
// net.Pipe's: setting a new time re-arms it. onExpire, when set, runs each
// time it passes.
type deadline struct {
	mu       sync.Mutex
	timer    *time.Timer
	ch       chan struct{}
	gen      uint64
	onExpire func()
}

func newDeadline() *deadline { return &deadline{ch: make(chan struct{})} }

func (d *deadline) wait() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.ch
}

func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	d.gen++
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
	select {
	case <-d.ch: // expired before: re-arm with a fresh channel
		d.ch = make(chan struct{})
	default:
	}
	if t.IsZero() {
		d.mu.Unlock()
		return
	}
	dur := time.Until(t)
	if dur <= 0 {
		close(d.ch)
		d.mu.Unlock()
		d.fired()
		return
	}
	gen := d.gen
	d.timer = time.AfterFunc(dur, func() {
		d.mu.Lock()
		if d.gen != gen {
			d.mu.Unlock()
			return
		}
		close(d.ch)
		d.mu.Unlock()
		d.fired()
	})
	d.mu.Unlock()
}

func (d *deadline) fired() {
	if d.onExpire != nil {
		d.onExpire()
	}
}
