package daemon

// wire builds the subsystems and connects them. Each issue's subsystem is
// added here, and only here.
func (d *Daemon) wire() error {
	return nil
}
