package daemon

// dashPart holds what the dashboard wiring builds. Owned by wire_dashboard.go.
type dashPart struct{}

// wireDashboard builds and registers the dashboard subsystem.
func (d *Daemon) wireDashboard() error { return nil }
