package devplane

import (
	"context"
	"fmt"

	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
)

// Faults are injected failures for tests (admin API: GET/PUT /admin/faults).
// The zero value injects nothing.
type Faults struct {
	// ControllerStatus / GatewayStatus, when non-zero, answer that
	// WebSocket handshake with this HTTP status (e.g. 401).
	ControllerStatus int `json:"controller_status"`
	GatewayStatus    int `json:"gateway_status"`
	// Times limits the two handshake faults to the next Times faulted
	// handshakes; 0 keeps them until cleared.
	Times int `json:"times,omitempty"`
	// NoGatewayURL sends register_success without gateway_ws_url.
	NoGatewayURL bool `json:"no_gateway_url"`
	// RegisterError answers `register` with an `error` carrying its request_id.
	RegisterError string `json:"register_error,omitempty"`
	// RegisterDelayMS sends register_in_progress, then waits this long
	// before register_success.
	RegisterDelayMS int `json:"register_delay_ms,omitempty"`
}

// SetFaults replaces the injected faults.
func (s *Server) SetFaults(f Faults) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = f
}

// GetFaults returns the injected faults.
func (s *Server) GetFaults() Faults {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.faults
}

// faultStatus is the injected handshake answer for kind (0: none). It
// consumes one of Times.
func (s *Server) faultStatus(kind string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	code := s.faults.ControllerStatus
	if kind == KindGateway {
		code = s.faults.GatewayStatus
	}
	if code != 0 && s.faults.Times > 0 {
		s.faults.Times--
		if s.faults.Times == 0 {
			s.faults.ControllerStatus, s.faults.GatewayStatus = 0, 0
		}
	}
	return code
}

// DropAll ends every live session without a close frame, as a crash would.
func (s *Server) DropAll() {
	s.mu.Lock()
	all := s.liveSessions()
	s.mu.Unlock()
	for _, sess := range all {
		sess.Drop()
	}
}

// SendGarbage writes a text frame that is not JSON to the cluster's session.
func (s *Server) SendGarbage(ctx context.Context, clusterID string) error {
	sess := s.Session(clusterID)
	if sess == nil {
		return fmt.Errorf("cluster %s has no live session", clusterID)
	}
	return sess.sendRaw(ctx, []byte("{not json\x00\xff"))
}

// SendError sends an `error` envelope (e.g. "cluster not found", §8.6).
func (s *Server) SendError(ctx context.Context, clusterID, msg string) error {
	sess := s.Session(clusterID)
	if sess == nil {
		return fmt.Errorf("cluster %s has no live session", clusterID)
	}
	return sess.Send(ctx, protocol.TypeError, "", protocol.ErrorPayload{Error: msg})
}

// Forget deletes the cluster record, so the gateway answers "cluster not
// found" and heartbeats are rejected until the agent registers again.
func (s *Server) Forget(clusterID string) {
	s.mu.Lock()
	delete(s.clusters, clusterID)
	s.mu.Unlock()
}

// liveSessions lists every open session; s.mu must be held.
func (s *Server) liveSessions() []*Session {
	all := make([]*Session, 0, len(s.live))
	for sess := range s.live {
		all = append(all, sess)
	}
	return all
}
