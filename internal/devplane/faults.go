package devplane

import (
	"context"
	"fmt"

	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
)

// faults are injected failures for tests (admin API: /admin/faults).
type faults struct {
	controllerStatus int  // non-zero: answer the controller handshake with it
	gatewayStatus    int  // non-zero: answer the gateway handshake with it
	noGateway        bool // register_success without gateway_ws_url
	times            int  // >0: the handshake faults apply to this many more handshakes
}

// Faults is the settable part of the fault state.
type Faults struct {
	ControllerStatus int  `json:"controller_status"`
	GatewayStatus    int  `json:"gateway_status"`
	NoGatewayURL     bool `json:"no_gateway_url"`
	// Times limits the handshake faults to the next Times faulted
	// handshakes; 0 keeps them until cleared.
	Times int `json:"times,omitempty"`
}

// SetFaults replaces the handshake faults (zero value: none).
func (s *Server) SetFaults(f Faults) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = faults{controllerStatus: f.ControllerStatus, gatewayStatus: f.GatewayStatus, noGateway: f.NoGatewayURL, times: f.Times}
}

// GetFaults returns the current handshake faults.
func (s *Server) GetFaults() Faults {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Faults{ControllerStatus: s.faults.controllerStatus, GatewayStatus: s.faults.gatewayStatus, NoGatewayURL: s.faults.noGateway, Times: s.faults.times}
}

// faultStatus is the injected handshake answer for kind (0: none). It
// consumes one of Times.
func (s *Server) faultStatus(kind string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	code := s.faults.controllerStatus
	if kind == KindGateway {
		code = s.faults.gatewayStatus
	}
	if code != 0 && s.faults.times > 0 {
		s.faults.times--
		if s.faults.times == 0 {
			s.faults = faults{noGateway: s.faults.noGateway}
		}
	}
	return code
}

func (s *Server) faultNoGateway() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.faults.noGateway
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
