package daemon

// chartsPart holds what the charts wiring builds. Owned by wire_charts.go.
type chartsPart struct{}

// wireCharts builds and registers the charts subsystem.
func (d *Daemon) wireCharts() error { return nil }
