package daemon

// routesPart holds what the routes wiring builds. Owned by wire_routes.go.
type routesPart struct{}

// wireRoutes builds and registers the routes subsystem.
func (d *Daemon) wireRoutes() error { return nil }
