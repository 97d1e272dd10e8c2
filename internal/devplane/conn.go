package devplane

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/gorilla/websocket"

	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
	"github.com/pipeops/pipeops-vm-agent/internal/wsconn"
)

// readLimit bounds one inbound message (the agent's read limit is 32 MiB too).
const readLimit = 32 << 20

var upgrader = websocket.Upgrader{
	ReadBufferSize:  64 << 10, // matches the agent (issue 6 measurements)
	WriteBufferSize: 64 << 10,
	CheckOrigin:     func(*http.Request) bool { return true }, // agents send no Origin
}

// coalescing hands the upgrader the hijacked connection wrapped for the
// session writer's frame coalescing (wsconn).
type coalescing struct{ http.ResponseWriter }

func (c coalescing) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	nc, brw, err := http.NewResponseController(c.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	return wsconn.New(nc), brw, nil
}

func (c coalescing) Unwrap() http.ResponseWriter { return c.ResponseWriter }

// serveController is the controller WebSocket (§1): the agent sends
// `register` and gets `register_success` with the gateway URL.
func (s *Server) serveController(w http.ResponseWriter, r *http.Request) {
	if !s.admit(w, r, s.faultStatus(KindController)) {
		return
	}
	ws, err := upgrader.Upgrade(coalescing{w}, r, nil)
	if err != nil {
		return
	}
	sess := newSession(KindController, ws)
	s.log.Info("controller session opened", "remote", r.RemoteAddr)
	s.readLoop(r.Context(), sess, s.gatewayURL(r))
}

// serveGateway is the gateway WebSocket (§2): the agent connects with
// ?cluster_uuid=… and the capability parameters.
func (s *Server) serveGateway(w http.ResponseWriter, r *http.Request) {
	if !s.admit(w, r, s.faultStatus(KindGateway)) {
		return
	}
	q := r.URL.Query()
	id := q.Get("cluster_uuid")
	ws, err := upgrader.Upgrade(coalescing{w}, r, nil)
	if err != nil {
		return
	}
	sess := newSession(KindGateway, ws)
	if !s.knownCluster(id) {
		// The real gateway's answer to an unknown cluster: an `error` the
		// agent must treat as a re-registration trigger (§8.6).
		s.log.Info("gateway session for unknown cluster", "cluster_id", id)
		_ = sess.Send(r.Context(), protocol.TypeError, "", protocol.ErrorPayload{Error: "cluster not found"})
		sess.Close()
		return
	}
	sess.setClusterID(id)
	params := map[string]string{}
	for k := range q {
		params[k] = q.Get(k)
	}
	s.attach(sess, params)
	s.mu.Lock()
	hooks := append([]func(*Session){}, s.gatewayHooks...)
	s.mu.Unlock()
	for _, h := range hooks {
		h(sess)
	}
	if len(hooks) == 0 {
		go func() {
			_ = sess.Send(context.Background(), protocol.TypeGatewayHello, "", map[string]any{"use_yamux": true})
		}()
	}
	s.log.Info("gateway session opened", "cluster_id", id, "remote", r.RemoteAddr)
	s.readLoop(r.Context(), sess, "")
}

// admit applies injected handshake faults and the token check.
func (s *Server) admit(w http.ResponseWriter, r *http.Request, fault int) bool {
	if fault != 0 {
		http.Error(w, "injected fault", fault)
		return false
	}
	if !s.CheckToken(r) {
		http.Error(w, "invalid or missing install token", http.StatusUnauthorized)
		return false
	}
	return true
}

// gatewayURL is the gateway_ws_url handed out in register_success.
func (s *Server) gatewayURL(r *http.Request) string {
	if s.GetFaults().NoGatewayURL {
		return ""
	}
	base := s.cfg.PublicURL
	if base == "" {
		base = "http://" + r.Host
		if r.TLS != nil {
			base = "https://" + r.Host
		}
	}
	u, err := url.Parse(base)
	if err != nil {
		return ""
	}
	switch u.Scheme {
	case "https":
		u.Scheme = "wss"
	case "http":
		u.Scheme = "ws"
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + GatewayPath
	return u.String()
}

// readLoop reads the session until it ends. Text frames are envelopes;
// binary frames go to the session's binary handler.
func (s *Server) readLoop(ctx context.Context, sess *Session, gatewayURL string) {
	closeCode := 0
	s.mu.Lock()
	s.live[sess] = true
	s.mu.Unlock()
	defer func() {
		sess.shutdown()
		s.detach(sess, closeCode)
		s.mu.Lock()
		delete(s.live, sess)
		s.mu.Unlock()
	}()
	sess.ws.SetReadLimit(readLimit)
	extend := func() { _ = sess.ws.SetReadDeadline(time.Now().Add(90 * time.Second)) }
	extend()
	sess.ws.SetPingHandler(func(data string) error {
		extend()
		sess.control(websocket.PongMessage, []byte(data), false) // through the single writer
		return nil
	})
	for {
		kind, data, err := wsconn.ReadMessage(sess.ws)
		if err != nil {
			closeCode = websocket.CloseAbnormalClosure
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				closeCode = ce.Code
			}
			return
		}
		extend()
		if kind == websocket.BinaryMessage {
			if h := sess.binaryHandler(); h != nil {
				h(data)
			}
			continue
		}
		env, err := protocol.Decode(data)
		if err != nil {
			s.log.Warn("malformed message from agent", "err", err)
			continue
		}
		s.wire.record(env.Type, data)
		s.dispatch(ctx, sess, env, gatewayURL)
	}
}

// dispatch handles one inbound envelope.
func (s *Server) dispatch(ctx context.Context, sess *Session, env *protocol.Envelope, gatewayURL string) {
	switch env.Type {
	case protocol.TypeRegister:
		if sess.Kind() != KindController {
			_ = sess.Send(ctx, protocol.TypeError, env.RequestID, protocol.ErrorPayload{Error: "register is only accepted on the controller"})
			return
		}
		s.register(ctx, sess, env, gatewayURL)
	case protocol.TypeHeartbeat:
		if !s.recordHeartbeat(sess, env.Payload) {
			_ = sess.Send(ctx, protocol.TypeError, "", protocol.ErrorPayload{Error: "cluster not found"})
			return
		}
		_ = sess.Send(ctx, protocol.TypeHeartbeatAck, "", nil)
	case protocol.TypePing:
		_ = sess.Send(ctx, protocol.TypePong, env.RequestID, map[string]string{"timestamp": time.Now().UTC().Format(time.RFC3339)})
	default:
		if sess.deliver(env) {
			return
		}
		s.mu.Lock()
		h := s.typeHandlers[env.Type]
		s.mu.Unlock()
		if h != nil {
			h(sess, env)
			return
		}
		s.log.Debug("unhandled message from agent", "type", env.Type, "request_id", env.RequestID)
		s.recordOther(sess, env)
	}
}

// register answers `register` (§4.1, §8.3) with a stable cluster id.
func (s *Server) register(ctx context.Context, sess *Session, env *protocol.Envelope, gatewayURL string) {
	var reg protocol.Register
	if err := env.DecodePayload(&reg); err != nil || reg.AgentID == "" {
		_ = sess.Send(ctx, protocol.TypeError, env.RequestID, protocol.ErrorPayload{Error: "register needs payload.agent_id"})
		return
	}
	f := s.GetFaults()
	if f.RegisterError != "" {
		_ = sess.Send(ctx, protocol.TypeError, env.RequestID, protocol.ErrorPayload{Error: f.RegisterError})
		return
	}
	id := ClusterIDFor(reg.AgentID)
	answer := func() {
		s.recordRegistration(id, &reg, env.Payload)
		sess.setClusterID(id)
		s.attach(sess, nil)
		s.log.Info("cluster registered", "cluster_id", id, "agent_id", reg.AgentID, "name", reg.Name)
		_ = sess.Send(ctx, protocol.TypeRegisterSuccess, env.RequestID, protocol.RegisterSuccess{
			ClusterID:    id,
			ClusterUUID:  id,
			Name:         reg.Name,
			Status:       "active",
			WorkspaceID:  json.Number("1"),
			GatewayWSURL: gatewayURL,
		})
	}
	if f.RegisterDelayMS <= 0 {
		answer()
		return
	}
	_ = sess.Send(ctx, protocol.TypeRegisterInProgress, env.RequestID, nil)
	go func() {
		select {
		case <-time.After(time.Duration(f.RegisterDelayMS) * time.Millisecond):
			answer()
		case <-sess.Done():
		}
	}()
}
