package daemon

// cpPart holds what the controlplane wiring builds. Owned by wire_controlplane.go.
type cpPart struct{}

// wireControlPlane builds and registers the controlplane subsystem.
func (d *Daemon) wireControlPlane() error { return nil }
