package daemon

import (
	"github.com/pipeops/pipeops-vm-agent/internal/dashboard"
	"github.com/pipeops/pipeops-vm-agent/internal/logging"
	"github.com/pipeops/pipeops-vm-agent/internal/statusserver"
)

// dashPart holds what the dashboard wiring builds. Owned by wire_dashboard.go.
type dashPart struct {
	dash *dashboard.Server
}

// wireDashboard builds the loopback dashboard: the page at / and /dashboard,
// /api/status (the polling fallback), SSE at /api/realtime/events and the
// WebSocket at /ws, each transport behind its switch.
func (d *Daemon) wireDashboard() error {
	d.dash = dashboard.New(dashboard.Options{
		Snapshot:        d.Status,
		Changed:         d.health.Changed,
		EnableSSE:       d.cfg.Agent.EnableSSE,
		EnableWebSocket: d.cfg.Agent.EnableWebSocket,
		LoopbackOnly:    statusserver.IsLoopback(d.cfg.Agent.BindAddress),
		Log:             d.log.With(logging.KeyComponent, "dashboard"),
		Registerer:      d.reg,
	})
	d.dash.Register(d.status.Handle)
	d.addSubsystem("dashboard", d.dash.Run)
	return nil
}

// SetLogBuffer hands the dashboard the buffer that the process's logger
// feeds (logging.Options.Sink), so the page shows recent warnings and errors.
// Call it between New and Run.
func (d *Daemon) SetLogBuffer(b *dashboard.LogBuffer) {
	if d.dash != nil {
		d.dash.SetLogs(b)
	}
}
