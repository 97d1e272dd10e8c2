package devplane

import "net/http"

// routesPart holds the route registry (protocol.md §9 from the control
// plane's side). Owned by the routes engineer.
type routesPart struct{}

// registerRoutes adds the route registry's REST and admin endpoints.
func (s *Server) registerRoutes(mux *http.ServeMux) {}
