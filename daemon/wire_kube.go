package daemon

// kubePart holds what the kube wiring builds. Owned by wire_kube.go.
type kubePart struct{}

// wireKube builds and registers the kube subsystem.
func (d *Daemon) wireKube() error { return nil }
