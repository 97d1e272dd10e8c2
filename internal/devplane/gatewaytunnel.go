package devplane

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
)

// The gateway side of protocol.md §7, with hashicorp/yamux v0.1.2 as the
// reference gateway uses it:
//
//  1. On every gateway session the server sends gateway_hello{use_yamux,
//     yamux_config} and starts a yamux SERVER over the session's binary frames.
//  2. gateway_hello_ack marks the tunnel usable; only then are streams opened.
//  3. Every stream starts with the §7.2 header. OpenTunnelStream opens one
//     directly; TunnelListen (and POST /admin/tunnel/forwards) opens a local
//     TCP or UDP listener whose every connection becomes a stream, so
//     `curl 127.0.0.1:<port>` reaches a cluster Service or an agent forward.

// TunnelOptions tune the gateway's side. The zero value is the reference
// gateway: 256 KiB windows, unframed UDP.
type TunnelOptions struct {
	// Window is the gateway's yamux MaxStreamWindowSize and the
	// max_stream_window_size it announces (default 262144).
	Window int
	// UDPFraming advertises length-prefixed UDP framing in gateway_hello.
	UDPFraming bool
	// NoHello makes the server skip gateway_hello: no tunnel at all.
	NoHello bool
}

// gatewayTunnelPart holds the gateway's yamux sessions and L4 listeners.
type gatewayTunnelPart struct {
	tunMu      sync.Mutex
	tunOpts    TunnelOptions
	tunnels    map[string]*gwTunnel // by cluster id: the newest session
	tunChanged chan struct{}        // closed and replaced on every change
	listeners  map[string]*tunListener
	nextListen int
}

// gwTunnel is the yamux server of one gateway session.
type gwTunnel struct {
	sess    *Session
	ys      *yamux.Session
	ready   chan struct{} // closed on gateway_hello_ack
	framed  bool          // UDP framing agreed by the ack
	readyMu sync.Once
}

// registerGatewayTunnel hooks gateway sessions and adds the admin routes.
func (s *Server) registerGatewayTunnel(mux *http.ServeMux) {
	s.tunnels = map[string]*gwTunnel{}
	s.listeners = map[string]*tunListener{}
	s.tunChanged = make(chan struct{})
	s.OnGatewaySession(s.startTunnel)
	s.HandleType(protocol.TypeGatewayHelloAck, s.onHelloAck)
	s.registerTunnelAdmin(mux)
}

// SetTunnelOptions changes the options for gateway sessions started later.
func (s *Server) SetTunnelOptions(o TunnelOptions) {
	s.tunMu.Lock()
	s.tunOpts = o
	s.tunMu.Unlock()
}

func (s *Server) tunnelChangedLocked() {
	close(s.tunChanged)
	s.tunChanged = make(chan struct{})
}

// startTunnel runs before the session's reader starts (OnGatewaySession).
func (s *Server) startTunnel(sess *Session) {
	s.tunMu.Lock()
	opts := s.tunOpts
	s.tunMu.Unlock()
	if opts.NoHello {
		return
	}
	window := opts.Window
	if window < 256<<10 {
		window = 256 << 10
	}
	conn := newGwConn(sess)
	sess.SetBinaryHandler(conn.sink)
	cfg := yamux.DefaultConfig()
	cfg.AcceptBacklog = 256
	cfg.KeepAliveInterval = 30 * time.Second
	cfg.ConnectionWriteTimeout = 30 * time.Second
	cfg.MaxStreamWindowSize = uint32(window)
	cfg.LogOutput = io.Discard
	ys, err := yamux.Server(conn, cfg)
	if err != nil {
		s.log.Error("gateway yamux server", "err", err)
		return
	}
	t := &gwTunnel{sess: sess, ys: ys, ready: make(chan struct{})}
	s.tunMu.Lock()
	if old := s.tunnels[sess.ClusterID()]; old != nil {
		_ = old.ys.Close()
	}
	s.tunnels[sess.ClusterID()] = t
	s.tunnelChangedLocked()
	s.tunMu.Unlock()

	hello := protocol.GatewayHello{UseYamux: true, YamuxConfig: &protocol.YamuxConfig{
		MaxStreamWindowSize: float64(window), KeepAliveIntervalSeconds: 30, ConnectionTimeoutSeconds: 30}}
	if opts.UDPFraming {
		hello.UDPFraming = protocol.UDPFramingLengthPrefixed
	}
	go func() {
		_ = sess.Send(context.Background(), protocol.TypeGatewayHello, "", hello)
		<-sess.Done()
		_ = ys.Close()
		_ = conn.Close()
		s.tunMu.Lock()
		if s.tunnels[sess.ClusterID()] == t {
			delete(s.tunnels, sess.ClusterID())
			s.tunnelChangedLocked()
		}
		s.tunMu.Unlock()
	}()
}

func (s *Server) onHelloAck(sess *Session, env *protocol.Envelope) {
	var ack protocol.GatewayHelloAck
	_ = env.DecodePayload(&ack)
	s.tunMu.Lock()
	defer s.tunMu.Unlock()
	t := s.tunnels[sess.ClusterID()]
	if t == nil || t.sess != sess || !ack.UseYamux {
		return
	}
	t.readyMu.Do(func() {
		t.framed = s.tunOpts.UDPFraming && ack.UDPFraming == protocol.UDPFramingLengthPrefixed
		close(t.ready)
		s.tunnelChangedLocked()
	})
	s.log.Info("gateway tunnel ready", "cluster_id", sess.ClusterID(), "udp_framing", t.framed)
}

// ErrNoTunnel: no agent session with an acknowledged tunnel.
var ErrNoTunnel = errors.New("devplane: no tunnel to that cluster")

// readyTunnel waits for the cluster's acknowledged tunnel; clusterID ""
// takes any (the only agent, in tests).
func (s *Server) readyTunnel(ctx context.Context, clusterID string) (*gwTunnel, error) {
	for {
		s.tunMu.Lock()
		changed := s.tunChanged
		var found *gwTunnel
		for id, t := range s.tunnels {
			if (clusterID == "" || id == clusterID) && isClosed(t.ready) && !t.ys.IsClosed() {
				found = t
			}
		}
		s.tunMu.Unlock()
		if found != nil {
			return found, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w %q: %w", ErrNoTunnel, clusterID, ctx.Err())
		}
	}
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// WaitTunnel blocks until the cluster's tunnel is acknowledged.
func (s *Server) WaitTunnel(ctx context.Context, clusterID string) error {
	_, err := s.readyTunnel(ctx, clusterID)
	return err
}

// TunnelTarget is what a stream asks the agent to reach (the §7.2 header).
type TunnelTarget struct {
	Protocol  string `json:"protocol,omitempty"` // "tcp" (default) or "udp"
	Service   string `json:"service"`            // Service name, or a forward name when Namespace is ""
	Namespace string `json:"namespace,omitempty"`
	Port      int    `json:"port,omitempty"`
	TunnelID  string `json:"tunnel_id,omitempty"`
}

// encodeHeader builds the §7.2 stream header.
func encodeHeader(t TunnelTarget) []byte {
	proto := byte(1)
	if t.Protocol == "udp" {
		proto = 2
	}
	b := []byte{1, proto}
	b = binary.BigEndian.AppendUint16(b, uint16(t.Port))
	for _, f := range []string{t.Service, t.Namespace, t.TunnelID} {
		b = binary.BigEndian.AppendUint16(b, uint16(len(f)))
		b = append(b, f...)
	}
	return b
}

// OpenTunnelStream opens a stream to the cluster's agent and writes the
// header. The stream's Close is a half-close (yamux FIN).
func (s *Server) OpenTunnelStream(ctx context.Context, clusterID string, t TunnelTarget) (net.Conn, error) {
	st, _, err := s.openStream(ctx, clusterID, t)
	return st, err
}

// OpenRawTunnelStream opens a stream and writes raw bytes instead of a header
// (tests of bad headers).
func (s *Server) OpenRawTunnelStream(ctx context.Context, clusterID string, raw []byte) (net.Conn, error) {
	gt, err := s.readyTunnel(ctx, clusterID)
	if err != nil {
		return nil, err
	}
	st, err := gt.ys.OpenStream()
	if err != nil {
		return nil, err
	}
	if len(raw) > 0 {
		if _, err := st.Write(raw); err != nil {
			st.Close()
			return nil, err
		}
	}
	return st, nil
}

func (s *Server) openStream(ctx context.Context, clusterID string, t TunnelTarget) (*yamux.Stream, bool, error) {
	gt, err := s.readyTunnel(ctx, clusterID)
	if err != nil {
		return nil, false, err
	}
	st, err := gt.ys.OpenStream()
	if err != nil {
		return nil, false, fmt.Errorf("open tunnel stream: %w", err)
	}
	if _, err := st.Write(encodeHeader(t)); err != nil {
		st.Close()
		return nil, false, fmt.Errorf("write tunnel stream header: %w", err)
	}
	return st, gt.framed, nil
}
