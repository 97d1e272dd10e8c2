package devplane

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

// gwConn is the gateway's io.ReadWriteCloser over a session's binary frames:
// inbound frames are queued by sink (on the session reader) and read by
// yamux; each Write is one binary frame.
type gwConn struct {
	sess   *Session
	mu     sync.Mutex
	queue  [][]byte
	wake   chan struct{}
	closed chan struct{}
	once   sync.Once
}

func newGwConn(sess *Session) *gwConn {
	return &gwConn{sess: sess, wake: make(chan struct{}, 1), closed: make(chan struct{})}
}

func (c *gwConn) sink(b []byte) {
	c.mu.Lock()
	c.queue = append(c.queue, b)
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *gwConn) Read(p []byte) (int, error) {
	for {
		c.mu.Lock()
		if len(c.queue) > 0 {
			n := copy(p, c.queue[0])
			if n == len(c.queue[0]) {
				c.queue = c.queue[1:]
			} else {
				c.queue[0] = c.queue[0][n:]
			}
			c.mu.Unlock()
			return n, nil
		}
		c.mu.Unlock()
		select {
		case <-c.wake:
		case <-c.closed:
			return 0, io.EOF
		case <-c.sess.Done():
			return 0, io.EOF
		}
	}
}

func (c *gwConn) Write(p []byte) (int, error) {
	// hashicorp/yamux reuses p after Write returns; SendBinary returns only
	// once the frame is written, so no copy is needed.
	if err := c.sess.SendBinary(context.Background(), p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (c *gwConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}

// ListenSpec asks for a local listener whose connections become streams.
type ListenSpec struct {
	TunnelTarget
	ClusterID string `json:"cluster_id,omitempty"` // "" = any connected agent
	Listen    string `json:"listen,omitempty"`     // default 127.0.0.1:0
}

// ListenerInfo describes an open listener.
type ListenerInfo struct {
	ID   string     `json:"id"`
	Addr string     `json:"addr"`
	Spec ListenSpec `json:"spec"`
}

type tunListener struct {
	info  ListenerInfo
	close func() error
}

// TunnelListen opens a listener for spec and returns its address.
func (s *Server) TunnelListen(spec ListenSpec) (ListenerInfo, error) {
	if spec.Listen == "" {
		spec.Listen = "127.0.0.1:0"
	}
	s.tunMu.Lock()
	s.nextListen++
	id := "l" + strconv.Itoa(s.nextListen)
	s.tunMu.Unlock()
	l := &tunListener{info: ListenerInfo{ID: id, Spec: spec}}
	if spec.Protocol == "udp" {
		pc, err := net.ListenPacket("udp", spec.Listen)
		if err != nil {
			return ListenerInfo{}, fmt.Errorf("listen udp %s: %w", spec.Listen, err)
		}
		l.info.Addr, l.close = pc.LocalAddr().String(), pc.Close
		go s.serveUDP(pc, spec)
	} else {
		ln, err := net.Listen("tcp", spec.Listen)
		if err != nil {
			return ListenerInfo{}, fmt.Errorf("listen tcp %s: %w", spec.Listen, err)
		}
		l.info.Addr, l.close = ln.Addr().String(), ln.Close
		go s.serveTCP(ln, spec)
	}
	s.tunMu.Lock()
	s.listeners[id] = l
	s.tunMu.Unlock()
	s.log.Info("tunnel listener open", "addr", l.info.Addr, "service", spec.Service, "namespace", spec.Namespace, "port", spec.Port)
	return l.info, nil
}

// CloseTunnelListener closes listener id.
func (s *Server) CloseTunnelListener(id string) bool {
	s.tunMu.Lock()
	l := s.listeners[id]
	delete(s.listeners, id)
	s.tunMu.Unlock()
	if l != nil {
		_ = l.close()
	}
	return l != nil
}

// TunnelListeners lists the open listeners.
func (s *Server) TunnelListeners() []ListenerInfo {
	s.tunMu.Lock()
	defer s.tunMu.Unlock()
	out := make([]ListenerInfo, 0, len(s.listeners))
	for _, l := range s.listeners {
		out = append(out, l.info)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func (s *Server) serveTCP(ln net.Listener, spec ListenSpec) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go s.relayTCP(c.(*net.TCPConn), spec)
	}
}

// relayTCP carries one local connection over a new stream, with half-close:
// local EOF → stream Close (a yamux FIN; reads go on), stream EOF → CloseWrite.
func (s *Server) relayTCP(c *net.TCPConn, spec ListenSpec) {
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	st, _, err := s.openStream(ctx, spec.ClusterID, spec.TunnelTarget)
	cancel()
	if err != nil {
		s.log.Info("tunnel listener: no stream", "err", err)
		return
	}
	defer st.Close()
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(st, c)
		_ = st.Close()
		close(done)
	}()
	_, _ = io.Copy(c, st)
	_ = c.CloseWrite()
	<-done
}

// serveUDP maps each client address to one stream (one UDP session).
func (s *Server) serveUDP(pc net.PacketConn, spec ListenSpec) {
	var mu sync.Mutex
	streams := map[string]*yamux.Stream{}
	framed := map[string]bool{}
	defer func() {
		mu.Lock()
		for _, st := range streams {
			st.Close()
		}
		mu.Unlock()
	}()
	buf := make([]byte, 65535)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		key := from.String()
		mu.Lock()
		st := streams[key]
		if st == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			var f bool
			st, f, err = s.openStream(ctx, spec.ClusterID, spec.TunnelTarget)
			cancel()
			if err != nil {
				mu.Unlock()
				continue
			}
			streams[key], framed[key] = st, f
			go func(st *yamux.Stream, to net.Addr, f bool) {
				udpBack(st, pc, to, f)
				mu.Lock()
				delete(streams, to.String())
				mu.Unlock()
			}(st, from, f)
		}
		f := framed[key]
		mu.Unlock()
		out := buf[:n]
		if f {
			out = binary.BigEndian.AppendUint16(make([]byte, 0, 2+n), uint16(n))
			out = append(out, buf[:n]...)
		}
		_, _ = st.Write(out)
	}
}

// udpBack sends the stream's datagrams back to the client.
func udpBack(st *yamux.Stream, pc net.PacketConn, to net.Addr, framed bool) {
	defer st.Close()
	buf := make([]byte, 65535)
	for {
		var n int
		if framed {
			var l [2]byte
			if _, err := io.ReadFull(st, l[:]); err != nil {
				return
			}
			n = int(binary.BigEndian.Uint16(l[:]))
			if _, err := io.ReadFull(st, buf[:n]); err != nil {
				return
			}
		} else {
			var err error
			if n, err = st.Read(buf); err != nil {
				return
			}
		}
		if _, err := pc.WriteTo(buf[:n], to); err != nil {
			return
		}
	}
}

// registerTunnelAdmin adds:
//
//	GET    /admin/tunnel/forwards        open listeners
//	POST   /admin/tunnel/forwards        open one: ListenSpec → ListenerInfo
//	DELETE /admin/tunnel/forwards/{id}   close one
func (s *Server) registerTunnelAdmin(mux *http.ServeMux) {
	mux.HandleFunc("GET /admin/tunnel/forwards", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.TunnelListeners())
	})
	mux.HandleFunc("POST /admin/tunnel/forwards", func(w http.ResponseWriter, r *http.Request) {
		var spec ListenSpec
		if err := json.NewDecoder(r.Body).Decode(&spec); err != nil || spec.Service == "" {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": `body must be {"service":"…","namespace":"…","port":N} (namespace "" names a forward)`})
			return
		}
		info, err := s.TunnelListen(spec)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
			return
		}
		writeJSON(w, http.StatusCreated, info)
	})
	mux.HandleFunc("DELETE /admin/tunnel/forwards/{id}", func(w http.ResponseWriter, r *http.Request) {
		if !s.CloseTunnelListener(r.PathValue("id")) {
			writeJSON(w, http.StatusNotFound, map[string]string{"error": "no such listener"})
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
}

func init() { RegisterFlags(tunnelFlags) }

// tunnelFlags are pipeops-devplane's tunnel flags.
func tunnelFlags(fs *flag.FlagSet) func(*Server) error {
	var forwards multiFlag
	fs.Var(&forwards, "forward", "open a local listener whose connections become tunnel streams: "+
		"[listen=]service.namespace:port[/udp] or [listen=]forward-name[/udp] (repeatable), e.g. 127.0.0.1:9000=web.default:80 or agent-http")
	window := fs.Int("tunnel-window", 0, "gateway yamux stream window in bytes, announced in gateway_hello (default 262144, as the reference gateway)")
	udpFraming := fs.Bool("udp-framing", false, "advertise length-prefixed UDP framing in gateway_hello")
	noYamux := fs.Bool("no-yamux", false, "send no gateway_hello: no tunnel")
	return func(s *Server) error {
		s.SetTunnelOptions(TunnelOptions{Window: *window, UDPFraming: *udpFraming, NoHello: *noYamux})
		for _, f := range forwards {
			spec, err := ParseForwardFlag(f)
			if err != nil {
				return err
			}
			if _, err := s.TunnelListen(spec); err != nil {
				return fmt.Errorf("--forward %s: %w", f, err)
			}
		}
		return nil
	}
}

// ParseForwardFlag parses the devplane's --forward flag:
// [listen=]<service>.<namespace>:<port>[/udp] or [listen=]<forward-name>[/udp],
// e.g. "127.0.0.1:9000=web.default:80" or "agent-http".
func ParseForwardFlag(v string) (ListenSpec, error) {
	var spec ListenSpec
	if i := lastIndexByte(v, '='); i >= 0 {
		spec.Listen, v = v[:i], v[i+1:]
	}
	if n := len(v); n > 4 && v[n-4:] == "/udp" {
		spec.Protocol, v = "udp", v[:n-4]
	}
	host, port, err := net.SplitHostPort(v)
	if err != nil { // a forward name
		if v == "" {
			return spec, fmt.Errorf("--forward %q: want service.namespace:port or a forward name", v)
		}
		spec.Service = v
		return spec, nil
	}
	p, err := strconv.Atoi(port)
	if err != nil || p <= 0 || p > 65535 {
		return spec, fmt.Errorf("--forward %q: bad port", v)
	}
	name, ns, ok := cutByte(host, '.')
	if !ok || name == "" || ns == "" {
		return spec, fmt.Errorf("--forward %q: want service.namespace:port", v)
	}
	spec.Service, spec.Namespace, spec.Port = name, ns, p
	return spec, nil
}

func lastIndexByte(s string, c byte) int {
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == c {
			return i
		}
	}
	return -1
}

func cutByte(s string, c byte) (string, string, bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}
