package daemon

// proxyPart holds what the proxy wiring builds. Owned by wire_proxy.go.
type proxyPart struct{}

// wireProxy builds and registers the proxy subsystem.
func (d *Daemon) wireProxy() error { return nil }
