package tunnel

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"time"

	yamux "github.com/libp2p/go-yamux/v5"

	"github.com/pipeops/pipeops-vm-agent/internal/logging"
	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
)

var errRefused = errors.New("target not allowed")

// session is the yamux client of one control-plane connection.
type session struct {
	gen         uint64
	ys          *yamux.Session
	fc          *FrameConn
	udpFramed   bool
	dialTimeout time.Duration
}

// Types is the message the Manager handles.
func (m *Manager) Types() []string { return []string{protocol.TypeGatewayHello} }

// Handle answers gateway_hello (§7.1). It runs on the connection's reader:
// the binary channel is switched over here, before the next frame is read,
// and the rest happens in a goroutine.
func (m *Manager) Handle(c protocol.Conn, env *protocol.Envelope) {
	var hello protocol.GatewayHello
	if err := env.DecodePayload(&hello); err != nil {
		m.log.Warn("malformed gateway_hello; ignoring it", logging.KeyErr, err)
		return
	}
	if !hello.UseYamux {
		m.log.Info("gateway_hello without use_yamux; no tunnel on this connection", logging.KeyGen, c.Generation())
		return
	}
	if c.BinaryChannelActive() {
		m.log.Warn("repeated gateway_hello on one connection; keeping the running session", logging.KeyGen, c.Generation())
		return
	}
	m.mu.Lock()
	if m.stopped {
		m.mu.Unlock()
		return
	}
	m.sessions.Add(1) // under the lock Run takes before it waits, like streams
	m.mu.Unlock()
	fc := NewFrameConn(c)
	c.StartBinaryChannel(fc.Sink)
	go func() {
		defer m.sessions.Done()
		m.runSession(c, fc, hello)
	}()
}

// yamuxConfig applies §7.1: the hello's values where given, our defaults
// otherwise, and our own stream window (a receive window is the receiver's
// choice; the reference gateway's 256 KiB would cap a stream at 256 KiB/RTT).
func (m *Manager) yamuxConfig(yc *protocol.YamuxConfig) (*yamux.Config, time.Duration) {
	cfg := yamux.DefaultConfig()
	cfg.AcceptBacklog = acceptBacklog
	cfg.EnableKeepAlive = true
	cfg.KeepAliveInterval = DefaultTimeout
	cfg.ConnectionWriteTimeout = DefaultTimeout
	cfg.MaxIncomingStreams = uint32(m.cfg.MaxStreams)
	cfg.MaxStreamWindowSize = uint32(m.cfg.StreamWindow)
	cfg.MaxMessageSize = frameMax // a full copy buffer toward the gateway is one frame (stream.go)
	cfg.LogOutput = &yamuxLog{log: m.log}
	if yc != nil {
		if s := yc.KeepAliveIntervalSeconds; s >= 1 && s <= 3600 {
			cfg.KeepAliveInterval = time.Duration(s * float64(time.Second))
		}
		if s := yc.ConnectionTimeoutSeconds; s >= 1 && s <= 3600 {
			cfg.ConnectionWriteTimeout = time.Duration(s * float64(time.Second))
		}
		if w := yc.MaxStreamWindowSize; w > float64(cfg.MaxStreamWindowSize) && w <= 1<<30 {
			cfg.MaxStreamWindowSize = uint32(w)
		}
	}
	return cfg, cfg.ConnectionWriteTimeout
}

func (m *Manager) runSession(c protocol.Conn, fc *FrameConn, hello protocol.GatewayHello) {
	log := m.log.With(logging.KeyGen, c.Generation())
	ack := protocol.GatewayHelloAck{UseYamux: true}
	framed := hello.UDPFraming == protocol.UDPFramingLengthPrefixed
	if framed {
		ack.UDPFraming = protocol.UDPFramingLengthPrefixed
	}
	sctx, cancel := context.WithTimeout(c.Context(), DefaultTimeout)
	err := c.Send(sctx, protocol.TypeGatewayHelloAck, "", ack)
	cancel()
	if err != nil {
		log.Warn("could not acknowledge gateway_hello; no tunnel on this connection", logging.KeyErr, err)
		_ = fc.Close()
		return
	}
	cfg, dialTimeout := m.yamuxConfig(hello.YamuxConfig)
	ys, err := yamux.Client(fc, cfg, m.budget.manager)
	if err != nil {
		log.Error("could not start the yamux session", logging.KeyErr, err)
		_ = fc.Close()
		return
	}
	s := &session{gen: c.Generation(), ys: ys, fc: fc, udpFramed: framed, dialTimeout: dialTimeout}
	m.mu.Lock()
	old := m.cur
	m.cur = s
	m.mu.Unlock()
	if old != nil {
		_ = old.ys.Close() // its connection is gone; its streams end now
	}
	log.Info("tunnel session started", "window", cfg.MaxStreamWindowSize, "udp_framing", framed)
	go func() {
		select {
		case <-c.Context().Done():
		case <-ys.CloseChan():
		}
		_ = ys.Close()
	}()
	lp := m.cfg.Health.Loop("tunnel-accept") // nil Health: not watched
	defer lp.Done()
	for {
		lp.Idle()
		st, err := ys.AcceptStream()
		lp.Busy()
		if err != nil {
			break
		}
		// Add only while not stopping, under the lock Run takes before it
		// waits: a WaitGroup must not grow while someone waits on it.
		m.mu.Lock()
		if m.stopped {
			m.mu.Unlock()
			_ = st.Reset()
			continue
		}
		m.streams.Add(1)
		m.mu.Unlock()
		go func() {
			defer m.streams.Done()
			m.serveStream(c.Context(), s, st)
		}()
	}
	_ = fc.Close()
	m.mu.Lock()
	if m.cur == s {
		m.cur = nil
	}
	m.mu.Unlock()
	log.Info("tunnel session ended")
}

// yamuxLog turns yamux's log lines into debug records.
type yamuxLog struct{ log *slog.Logger }

func (l *yamuxLog) Write(p []byte) (int, error) {
	l.log.Debug("yamux", "msg", string(bytes.TrimSpace(p)))
	return len(p), nil
}
