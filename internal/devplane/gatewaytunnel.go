package devplane

import "net/http"

// gatewayTunnelPart holds the gateway's yamux server and L4 listeners
// (protocol.md §7 from the control plane's side). Owned by the tunnel engineer.
type gatewayTunnelPart struct{}

// registerGatewayTunnel adds the tunnel's routes and hooks.
func (s *Server) registerGatewayTunnel(mux *http.ServeMux) {}
