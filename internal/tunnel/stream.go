package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	yamux "github.com/libp2p/go-yamux/v5"

	"github.com/pipeops/pipeops-vm-agent/internal/egress"
	"github.com/pipeops/pipeops-vm-agent/internal/logging"
)

// serveStream handles one stream opened by the gateway: header, target,
// relay. It never panics and always closes the stream.
func (m *Manager) serveStream(ctx context.Context, s *session, st *yamux.Stream) {
	start := time.Now()
	m.m.streamStarted()
	defer func() { m.m.streamEnded(time.Since(start).Seconds()) }()
	defer func() {
		if r := recover(); r != nil {
			m.log.Error("tunnel stream handler panicked; stream reset", logging.KeyPanic, fmt.Sprint(r))
			_ = st.Reset()
		}
	}()

	_ = st.SetReadDeadline(time.Now().Add(m.cfg.HeaderTimeout))
	h, err := ReadHeader(st)
	if err != nil {
		m.m.error(errHeader)
		m.log.Warn("bad tunnel stream header; stream reset", logging.KeyErr, err)
		_ = st.Reset()
		return
	}
	_ = st.SetReadDeadline(time.Time{})
	log := m.log.With(logging.KeyService, h.Name, logging.KeyNamespace, h.Namespace, "port", h.Port, "tunnel_id", h.TunnelID)
	if a := h.Anomaly(); a != "" {
		log.Warn("unusual tunnel stream header; accepting it as the reference does", "anomaly", a)
	}
	network := "tcp"
	if h.IsUDP() {
		network = "udp"
	}
	dctx, cancel := context.WithTimeout(ctx, s.dialTimeout)
	target, addr, err := m.dial(dctx, network, h)
	cancel()
	if err != nil {
		m.m.error(errDial)
		switch {
		case errors.Is(err, egress.ErrRefused):
			// The dial policy counted it and logged it once per target.
			log.Debug("tunnel stream refused by the dial policy", logging.KeyErr, err)
		case errors.Is(err, errRefused):
			log.Warn("tunnel stream refused", logging.KeyErr, err)
		default:
			log.Info("tunnel target unreachable", logging.KeyErr, err)
		}
		_ = st.Close() // §7.3: close, no message on the wire
		return
	}
	log.Debug("tunnel stream connected", logging.KeyAddr, addr, "network", network)
	if h.IsUDP() {
		err = m.relayUDP(st, target, s.udpFramed)
	} else {
		err = m.relayTCP(st, target)
	}
	if err != nil {
		m.m.error(errCopy)
		log.Debug("tunnel stream ended with an error", logging.KeyErr, err)
	}
}

// relayTCP copies both ways with half-close: EOF from the gateway closes the
// target's write side, EOF from the target closes the stream's write side.
// A failure in either direction resets the stream and closes the target.
// The inactivity timeout closes both; that is not an error.
func (m *Manager) relayTCP(st *yamux.Stream, target net.Conn) error {
	var closing atomic.Bool
	abort := func() {
		closing.Store(true)
		_ = st.Reset()
		_ = target.Close()
	}
	idle := startIdle(m.cfg.InactivityTimeout, func() {
		m.log.Debug("tunnel stream idle; closing it", "timeout", m.cfg.InactivityTimeout)
		closing.Store(true)
		_ = st.Close()
		_ = target.Close()
	})
	defer idle.stop()

	var wg sync.WaitGroup
	var once sync.Once
	var firstErr error
	fail := func(err error) {
		if closing.Load() {
			return
		}
		once.Do(func() { firstErr = err })
		abort()
	}
	wg.Add(2)
	go func() { // gateway → target
		defer wg.Done()
		if err := pump(target, st, idle, m.m.in, &inPool); err != nil {
			fail(fmt.Errorf("gateway to target: %w", err))
			return
		}
		if cw, ok := target.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		} else {
			_ = target.Close()
		}
	}()
	go func() { // target → gateway
		defer wg.Done()
		if err := pump(st, target, idle, m.m.out, &outPool); err != nil {
			fail(fmt.Errorf("target to gateway: %w", err))
			return
		}
		_ = st.CloseWrite()
	}()
	wg.Wait()
	_ = target.Close()
	_ = st.Close()
	return firstErr
}

// Copy buffers: each direction reads into a small buffer until a read fills
// it, then into a large pooled one until reads come back small again. An
// idle stream so holds 2 KiB per direction. Toward the target a busy
// stream holds 64 KiB. Toward the gateway the large buffer is one yamux
// frame's payload (frameMax less the 12-byte header), so every full read is
// one frame and one WebSocket message: fewer, larger frames cost less per
// byte than 64 KiB ones (hand-offs, syscalls), and a 64 KiB read no longer
// became a full frame plus a 12-byte one. The reference agent sends frames
// of up to its 256 KiB window, so a gateway takes messages of this size.
const (
	smallBuf = 2 << 10
	inBuf    = 64 << 10
	frameMax = 256 << 10 // yamux.Config.MaxMessageSize
	outBuf   = frameMax - 12
)

var (
	inPool  = sync.Pool{New: func() any { b := make([]byte, inBuf); return &b }}
	outPool = sync.Pool{New: func() any { b := make([]byte, outBuf); return &b }}
)

// pump copies src to dst until EOF (nil) or an error.
func pump(dst io.Writer, src io.Reader, idle *idleTimer, count func(int), largePool *sync.Pool) error {
	small := make([]byte, smallBuf)
	buf := small
	var large *[]byte
	defer func() {
		if large != nil {
			largePool.Put(large)
		}
	}()
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			idle.touch()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return werr
			}
			count(n)
		}
		if rerr != nil {
			if rerr == io.EOF {
				return nil
			}
			return rerr
		}
		switch {
		case large == nil && n == len(buf):
			large = largePool.Get().(*[]byte)
			buf = *large
		case large != nil && n < smallBuf:
			largePool.Put(large)
			large, buf = nil, small
		}
	}
}

// idleTimer runs fn once no traffic was seen for timeout.
type idleTimer struct {
	timeout time.Duration
	last    atomic.Int64 // unix nanos of the last traffic
	t       *time.Timer
	fn      func()
	mu      sync.Mutex
	stopped bool
}

func startIdle(timeout time.Duration, fn func()) *idleTimer {
	it := &idleTimer{timeout: timeout, fn: fn}
	it.touch()
	it.mu.Lock()
	it.t = time.AfterFunc(timeout, it.check)
	it.mu.Unlock()
	return it
}

func (it *idleTimer) touch() { it.last.Store(time.Now().UnixNano()) }

func (it *idleTimer) check() {
	it.mu.Lock()
	if it.stopped {
		it.mu.Unlock()
		return
	}
	since := time.Since(time.Unix(0, it.last.Load()))
	if since < it.timeout {
		it.t.Reset(it.timeout - since)
		it.mu.Unlock()
		return
	}
	it.stopped = true
	it.mu.Unlock()
	it.fn()
}

func (it *idleTimer) stop() {
	it.mu.Lock()
	it.stopped = true
	it.t.Stop()
	it.mu.Unlock()
}
