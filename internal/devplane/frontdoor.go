package devplane

import "net/http"

// frontDoorPart holds the HTTP front door's state (protocol.md §6 from the
// control plane's side). Owned by the proxy engineer.
type frontDoorPart struct{}

// registerFrontDoor adds the front door's routes.
func (s *Server) registerFrontDoor(mux *http.ServeMux) {}
