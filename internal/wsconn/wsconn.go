// Package wsconn holds the WebSocket plumbing shared by the agent's link
// (internal/controlplane) and the reference control plane
// (internal/devplane): a net.Conn wrapper that lets the one writer
// goroutine of a connection coalesce consecutive frames into one write
// syscall, and a message reader that avoids io.ReadAll's buffer growth.
//
// Coalescing. gorilla/websocket writes every frame (data or control) to its
// net.Conn with one Write call. Wrap the raw connection with New before the
// handshake (a Dialer's NetDialContext, or the hijacked connection of an
// upgrade), find the wrapper again with Find, and let the writer goroutine
// call Begin before writing a frame and Flush when its queue is momentarily
// empty. Between Begin and Flush every Write from any goroutine (gorilla's
// own control frames included: pongs answered from the read side, close
// frames) goes into one buffer under one mutex, so frames are never
// reordered or interleaved and nothing written during a batch outlives the
// batch's Flush. Outside a batch, Writes go straight to the connection as
// before (the handshake, writes from other goroutines while the writer is
// idle).
package wsconn

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// bufSize is the coalescing buffer. A batch larger than this is written
// out as the buffer fills; a single Write larger than it bypasses it.
const bufSize = 256 << 10

// closeFlush bounds the best-effort flush of pending bytes in Close.
const closeFlush = time.Second

// directMin is the smallest write of a batch that is not copied into the
// buffer: it goes out at once, together with what the buffer holds, in
// one vectored write (a bulk yamux frame is not copied once more).
const directMin = 32 << 10

// Conn is a net.Conn whose writes can be batched. See the package comment.
type Conn struct {
	net.Conn

	mu       sync.Mutex
	buf      []byte // the batch's bytes not yet written
	batching bool
	flushes  int // Flush calls that wrote something
}

// New wraps c. The wrapper starts unbatched: writes go straight to c.
func New(c net.Conn) *Conn {
	return &Conn{Conn: c}
}

// writeOut writes the buffered bytes and then p (either may be empty) in
// one vectored write, and empties the buffer. On a failure the bytes not
// written stay buffered, so a later write keeps the order.
func (c *Conn) writeOut(p []byte) (int, error) {
	if len(c.buf) == 0 {
		if len(p) == 0 {
			return 0, nil
		}
		return c.Conn.Write(p)
	}
	bufs := net.Buffers{c.buf, p}
	if len(p) == 0 {
		bufs = bufs[:1]
	}
	held := len(c.buf)
	n, err := bufs.WriteTo(c.Conn)
	if n >= int64(held) {
		c.buf = c.buf[:0]
		return int(n) - held, err
	}
	c.buf = c.buf[:copy(c.buf, c.buf[n:])]
	return 0, err
}

// Find returns the *Conn under c (through *tls.Conn and other wrappers
// with a NetConn method), or nil.
func Find(c net.Conn) *Conn {
	for i := 0; c != nil && i < 8; i++ {
		switch v := c.(type) {
		case *Conn:
			return v
		case interface{ NetConn() net.Conn }:
			c = v.NetConn()
		default:
			return nil
		}
	}
	return nil
}

// Write buffers p during a batch (a large p goes out at once, with the
// buffer before it), else writes it through.
func (c *Conn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.batching && len(p) < directMin {
		if len(c.buf)+len(p) > bufSize {
			if _, err := c.writeOut(nil); err != nil {
				return 0, err
			}
		}
		if c.buf == nil {
			c.buf = make([]byte, 0, bufSize)
		}
		c.buf = append(c.buf, p...)
		return len(p), nil
	}
	// Unbatched (a failed Flush may have left bytes behind: they go first),
	// or a large write of a batch.
	return c.writeOut(p)
}

// Begin starts (or continues) a batch: later writes are buffered until Flush.
func (c *Conn) Begin() {
	c.mu.Lock()
	c.batching = true
	c.mu.Unlock()
}

// Flush ends the batch and writes the buffered bytes with the write
// deadline set to deadline (zero: none), clearing it afterwards.
func (c *Conn) Flush(deadline time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.batching = false
	if len(c.buf) == 0 {
		return nil
	}
	c.flushes++
	_ = c.Conn.SetWriteDeadline(deadline)
	_, err := c.writeOut(nil)
	_ = c.Conn.SetWriteDeadline(time.Time{})
	return err
}

// Flushes is how many Flush calls wrote something.
func (c *Conn) Flushes() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.flushes
}

// Buffered is the number of bytes waiting for Flush.
func (c *Conn) Buffered() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.buf)
}

// Close writes pending bytes if no write is in progress (bounded by a
// short deadline), then closes the connection. It never waits for a
// writer stuck on a slow peer: closing is what unblocks it.
func (c *Conn) Close() error {
	if c.mu.TryLock() {
		if len(c.buf) > 0 {
			_ = c.Conn.SetWriteDeadline(time.Now().Add(closeFlush))
			_, _ = c.writeOut(nil)
		}
		c.batching = false
		c.mu.Unlock()
	}
	return c.Conn.Close()
}

// NetConn is the wrapped connection.
func (c *Conn) NetConn() net.Conn { return c.Conn }

const readBufSize = 64 << 10

// ReadMessage is ws.ReadMessage without io.ReadAll's repeated growth: the
// message is read into a pooled buffer (64 KiB, grown when needed) and
// returned as one exact-size copy the caller may keep.
func ReadMessage(ws *websocket.Conn) (int, []byte, error) {
	return ReadMessageOwned(ws, func(int) bool { return false })
}

// ownMin is the smallest message ReadMessageOwned hands over in its pooled
// buffer; a smaller one is copied, so a short message never pins 64 KiB.
const ownMin = 16 << 10

// ReadMessageOwned is ReadMessage, except that a message of a kind own
// accepts, and of at least 16 KiB, is returned in the pooled buffer itself,
// without the copy: the caller owns it, and may hand it back with Release
// once it is done with the bytes (or leave it to the garbage collector).
func ReadMessageOwned(ws *websocket.Conn, own func(kind int) bool) (int, []byte, error) {
	kind, r, err := ws.NextReader()
	if err != nil {
		return kind, nil, err
	}
	var buf []byte
	select {
	case buf = <-spares:
		spareBytes.Add(-int64(cap(buf)))
	default:
		buf = make([]byte, 0, readBufSize)
	}
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, rerr := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			Release(buf)
			return kind, nil, rerr
		}
	}
	if len(buf) >= ownMin && own(kind) {
		return kind, buf, nil
	}
	out := make([]byte, len(buf))
	copy(out, buf)
	Release(buf)
	return kind, out, nil
}

// Release hands a buffer from ReadMessageOwned back for reuse. The caller
// must not touch it afterwards.
func Release(b []byte) {
	if cap(b) < readBufSize || spareBytes.Add(int64(cap(b))) > maxSpare {
		spareBytes.Add(-int64(cap(b)))
		return // left to the garbage collector
	}
	select {
	case spares <- b[:0]:
	default:
		spareBytes.Add(-int64(cap(b)))
	}
}

// spares are read buffers handed back (grown ones too, so large messages
// do not grow a fresh buffer each time), at most maxSpare bytes of them:
// a burst of queued frames does not stay resident once it is read.
var (
	spares     = make(chan []byte, 64)
	spareBytes atomic.Int64
)

const maxSpare = 4 << 20
