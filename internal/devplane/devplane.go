// Package devplane is the reference control plane: a small, readable
// implementation of the control plane's side of protocol.md that tests run
// in-process and cmd/pipeops-devplane runs as a binary. It documents the
// protocol as much as it tests the agent.
//
// One http.Handler (Server.Handler) serves everything on one listener:
//
//	GET  /api/v1/clusters/agent/ws   controller WebSocket: register → register_success (§4.1, §8.3)
//	GET  /ws?cluster_uuid=…          gateway WebSocket: heartbeats and proxy traffic (§2)
//	     /admin/...                  admin JSON API (clusters, faults, wire check); see registry.go, wirespec.go
//	     (front door, tunnel, routes) added by the part files below
//
// # API for the other parts (front door, gateway tunnel, routes)
//
// The Server embeds frontDoorPart (frontdoor.go), gatewayTunnelPart
// (gatewaytunnel.go) and routesPart (routes.go). Each part file owns its
// struct's fields and a registerX(mux) method that New calls once, in that
// order, after the core routes exist. From there a part may use:
//
//   - s.Session(clusterID) *Session: the cluster's live agent session (gateway
//     or controller), nil when none. s.WaitSession(ctx, clusterID) waits for one.
//   - s.OnGatewaySession(func(*Session)): runs synchronously when an agent's
//     gateway session starts, BEFORE its reader starts, so it may call
//     SetBinaryHandler without losing frames. It must not block. When at least
//     one hook is registered, the hooks own sending gateway_hello; with none,
//     the core sends gateway_hello{use_yamux:true} itself and ignores the ack.
//   - s.HandleType(typ, func(*Session, *protocol.Envelope)): inbound envelopes
//     of a type the core does not handle (e.g. gateway_hello_ack), called on
//     the session's reader goroutine; return quickly.
//   - s.CheckToken(r) bool: the Bearer install-token check used by REST and
//     WebSocket endpoints (Authorization: Bearer <token>).
//   - s.AdminHandle(pattern, h): adds an admin endpoint; pattern as for
//     http.ServeMux, conventionally "GET /admin/<part>/...".
//   - s.Logger() *slog.Logger.
//   - RegisterFlags(func(fs *flag.FlagSet) func(*Server) error), from an
//     init() in the part's file: flags of the pipeops-devplane binary (cmd.go).
//
// Tests drive the server directly: Clusters/Cluster (what the admin API
// shows), ServiceToken (the k8s_service_token a cluster registered with),
// SetFaults (handshake status codes, no gateway URL), DropAll,
// CloseAll, SendGarbage, SendError, Forget.
//
// On a *Session (safe for concurrent use):
//
//   - Send(ctx, typ, requestID, payload) error: one JSON envelope, through the
//     session's single writer goroutine.
//   - SendBinary(ctx, data) error: one binary frame through the same writer.
//   - Subscribe(requestID) (<-chan *protocol.Envelope, func()): every later
//     inbound envelope whose top-level request_id equals requestID (e.g.
//     proxy_response_*, or ws data keyed by stream id). The channel is
//     buffered (256); when it is full the reader blocks, which is
//     backpressure, so always drain or cancel. cancel is idempotent. The
//     channel is closed when the session ends or cancel is called.
//   - SetBinaryHandler(func([]byte)): every later inbound binary frame, in
//     order, on the reader goroutine (the slice is not reused).
//   - ClusterID(), Kind() ("controller"|"gateway"), Done() <-chan struct{},
//     Close().
package devplane

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"

	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
)

// Paths served by the core.
const (
	ControllerPath = "/api/v1/clusters/agent/ws"
	GatewayPath    = "/ws"
)

// Config configures a Server.
type Config struct {
	// Tokens are the accepted install tokens (Bearer). Empty accepts none.
	Tokens []string
	// PublicURL is the base URL agents reach this server at (e.g.
	// "http://127.0.0.1:8090"); gateway_ws_url is derived from it. Empty
	// derives it from each request's Host.
	PublicURL string
	// Logger; nil discards.
	Logger *slog.Logger
}

// Server is the reference control plane. Construct with New.
type Server struct {
	frontDoorPart
	gatewayTunnelPart
	routesPart

	cfg Config
	log *slog.Logger
	mux *http.ServeMux

	mu           sync.Mutex
	clusters     map[string]*cluster // by cluster id
	sessions     map[string]*Session // live session per cluster id
	live         map[*Session]bool   // every open session, registered or not
	waiters      map[string][]chan struct{}
	gatewayHooks []func(*Session)
	typeHandlers map[string]func(*Session, *protocol.Envelope)
	faults       Faults
	wire         wireLog
}

// New builds a Server; it starts nothing.
func New(cfg Config) *Server {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s := &Server{
		cfg:          cfg,
		log:          log,
		mux:          http.NewServeMux(),
		clusters:     map[string]*cluster{},
		sessions:     map[string]*Session{},
		live:         map[*Session]bool{},
		waiters:      map[string][]chan struct{}{},
		typeHandlers: map[string]func(*Session, *protocol.Envelope){},
	}
	s.mux.HandleFunc("GET "+ControllerPath, s.serveController)
	s.mux.HandleFunc("GET "+GatewayPath, s.serveGateway)
	s.registerAdmin(s.mux)
	s.registerWire(s.mux)
	s.registerFrontDoor(s.mux)
	s.registerGatewayTunnel(s.mux)
	s.registerRoutes(s.mux)
	return s
}

// Handler serves every endpoint.
func (s *Server) Handler() http.Handler { return s.mux }

// Logger is the server's logger.
func (s *Server) Logger() *slog.Logger { return s.log }

// AdminHandle adds an admin endpoint (conventionally under /admin/).
func (s *Server) AdminHandle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// CheckToken reports whether r carries an accepted install token as
// "Authorization: Bearer <token>".
func (s *Server) CheckToken(r *http.Request) bool {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || tok == "" {
		return false
	}
	for _, t := range s.cfg.Tokens {
		if subtle.ConstantTimeCompare([]byte(t), []byte(tok)) == 1 {
			return true
		}
	}
	return false
}

// OnGatewaySession adds a hook run when an agent's gateway session starts.
// See the package comment for its contract.
func (s *Server) OnGatewaySession(fn func(*Session)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gatewayHooks = append(s.gatewayHooks, fn)
}

// HandleType routes inbound envelopes of typ, which the core does not
// handle itself, to fn on the session's reader goroutine.
func (s *Server) HandleType(typ string, fn func(*Session, *protocol.Envelope)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.typeHandlers[typ] = fn
}

// ClusterIDFor is the stable cluster id the server issues for agentID: the
// same across registrations and server restarts.
func ClusterIDFor(agentID string) string {
	h := sha256.Sum256([]byte("pipeops-devplane|" + agentID))
	return fmt.Sprintf("%x-%x-%x-%x-%x", h[0:4], h[4:6], h[6:8], h[8:10], h[10:16])
}
