// Package daemon is the agent's composition root: New builds every
// subsystem from the configuration, and Run starts them, drives sd_notify and
// orders shutdown. It is the only package that imports "the world"; every
// internal package gets its dependencies through constructor arguments.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/config"
	"github.com/pipeops/pipeops-vm-agent/internal/health"
	"github.com/pipeops/pipeops-vm-agent/internal/hostinfo"
	"github.com/pipeops/pipeops-vm-agent/internal/localapi"
	"github.com/pipeops/pipeops-vm-agent/internal/logging"
	"github.com/pipeops/pipeops-vm-agent/internal/paths"
	"github.com/pipeops/pipeops-vm-agent/internal/sdnotify"
	"github.com/pipeops/pipeops-vm-agent/internal/state"
	"github.com/pipeops/pipeops-vm-agent/internal/statusserver"
	"github.com/pipeops/pipeops-vm-agent/internal/version"
)

// Exit codes of pipeops-agent (conventions §3).
const (
	ExitOK      = 0
	ExitFailure = 1 // systemd restarts the agent
	ExitConfig  = 2 // invalid config or usage: RestartPreventExitStatus=2
)

// subsystem is a long-running part of the agent: Run blocks until ctx ends
// and returns nil then; it returns an error only for a failure a restart might fix.
type subsystem struct {
	name string
	run  func(ctx context.Context) error
}

// Daemon is the running agent.
type Daemon struct {
	cfg     *config.Config
	log     *slog.Logger
	state   *state.Store
	health  *health.Tracker
	reg     *prometheus.Registry
	status  *statusserver.Server
	api     *localapi.Server
	notify  *sdnotify.Notifier
	agentID string
	started time.Time

	// Each part is owned by one subsystem's wiring file (wire_<part>.go).
	kubePart
	cpPart
	proxyPart
	tunnelPart
	routesPart
	chartsPart
	dashPart

	subsystems []subsystem
	// fillers add each subsystem's section to the status snapshot.
	fillers []func(ctx context.Context, st *apitype.StatusResponse)
	link    linkSource
}

// linkSource is what the control-plane link exposes to /health and status.
type linkSource interface {
	Link() (string, bool)
}

// New builds the agent from a validated configuration. It opens the state
// store (local I/O only) but starts nothing and dials nothing.
func New(cfg *config.Config, log *slog.Logger) (*Daemon, error) {
	stateDir := cfg.Agent.StateDir
	if stateDir == "" {
		stateDir = paths.StateDir()
	}
	st, err := state.Open(stateDir, log.With(logging.KeyComponent, "state"))
	if err != nil {
		return nil, fmt.Errorf("open state: %w", err)
	}
	d := &Daemon{cfg: cfg, log: log, state: st, health: health.New(nil), reg: prometheus.NewRegistry(),
		notify: &sdnotify.Notifier{Log: log}, started: time.Now()}
	d.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	info := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "pipeops_agent_info", Help: "Build information of the running agent."},
		[]string{"version", "commit", "go_version"})
	v := version.Get()
	info.WithLabelValues(v.Version, v.GitCommit, v.GoVersion).Set(1)
	d.reg.MustRegister(info)

	if d.agentID, err = d.resolveAgentID(); err != nil {
		return nil, err
	}
	if stall := stallHook(filepath.Dir(socket0(cfg))); stall != nil {
		d.health.SetStall(stall) // test builds only (-tags pipeops_testhooks)
	}
	d.health.Require(health.ControlPlane, "connecting to "+cfg.PipeOps.APIURL)
	d.health.Require(health.Kubernetes, "connecting to the Kubernetes API")

	socket := socket0(cfg)
	d.status = statusserver.New(cfg.Agent.BindAddress, cfg.Agent.Port, d.health, d, d.reg, log.With(logging.KeyComponent, "http"))
	d.api = localapi.New(socket, d, log.With(logging.KeyComponent, "localapi"))
	if err := d.wire(); err != nil {
		return nil, err
	}
	return d, nil
}

// socket0 is the local API socket's path.
func socket0(cfg *config.Config) string {
	if cfg.Agent.Socket != "" {
		return cfg.Agent.Socket
	}
	return paths.Socket()
}

// resolveAgentID applies protocol.md §8.1: configured, else persisted, else
// derived from the host and persisted at once.
func (d *Daemon) resolveAgentID() (string, error) {
	if d.cfg.Agent.ID != "" {
		return d.cfg.Agent.ID, nil
	}
	if id := d.state.Get().AgentID; id != "" {
		return id, nil
	}
	id := hostinfo.AgentID(hostinfo.Hostname(), hostinfo.Root("").MachineID(), hostinfo.FirstMAC())
	if err := d.state.Update(func(s *state.State) error { s.AgentID = id; return nil }); err != nil {
		return "", fmt.Errorf("persist agent id: %w", err)
	}
	return id, nil
}

// Link reports the control-plane link state for /health.
func (d *Daemon) Link() (string, bool) {
	if d.link == nil {
		return apitype.LinkConnecting, false
	}
	return d.link.Link()
}

// Status is the local API's snapshot.
func (d *Daemon) Status(ctx context.Context) apitype.StatusResponse {
	v := version.Get()
	st := d.state.Get()
	ok, reasons := d.health.Ready()
	resp := apitype.StatusResponse{
		Version: v.Version, Commit: v.GitCommit, AgentID: d.agentID, ClusterName: d.cfg.Agent.Name,
		ClusterID: st.ClusterID, StartedAt: d.started, Ready: ok, NotReady: reasons,
		Link:       apitype.LinkStatus{State: apitype.LinkConnecting},
		Monitoring: apitype.MonitoringStatus{Enabled: d.cfg.Monitoring.Enabled},
		Routes:     apitype.RoutesStatus{Enabled: d.cfg.Gateway.Enabled},
	}
	for _, f := range d.cfg.Tunnel.Forwards {
		resp.Tunnel.Forwards = append(resp.Tunnel.Forwards, apitype.Forward{Name: f.Name, LocalAddr: f.LocalAddr})
	}
	for _, c := range d.health.Snapshot() {
		resp.Conditions = append(resp.Conditions, apitype.Condition(c))
	}
	for _, fill := range d.fillers {
		fill(ctx, &resp)
	}
	return resp
}

// Run starts everything and blocks until ctx ends or a subsystem fails, then
// shuts down in order: STOPPING=1, subsystems (which close the CP socket with
// 1000 and cancel in-flight work), the status server, and the local API last
// so `pipeopsctl status` works during a slow stop.
func (d *Daemon) Run(ctx context.Context) error {
	apiLn, err := d.api.Listen()
	if err != nil {
		return fmt.Errorf("open local API socket: %w", err)
	}
	httpLn, err := d.status.Listen()
	if err != nil {
		apiLn.Close()
		return err
	}
	apiCtx, stopAPI := context.WithCancel(context.WithoutCancel(ctx))
	apiDone := make(chan error, 1)
	go func() { apiDone <- d.api.Serve(apiCtx, apiLn) }()
	httpCtx, stopHTTP := context.WithCancel(context.WithoutCancel(ctx))
	httpDone := make(chan error, 1)
	go func() { httpDone <- d.status.Serve(httpCtx, httpLn) }()

	// READY before any remote step: a control-plane outage must not fail
	// `systemctl start`. And before the loops start, so READY=1 is the first
	// thing systemd hears: no STATUS= or WATCHDOG=1 ahead of it.
	d.notify.Ready("starting: connecting to control plane")
	g, gctx := errgroup.WithContext(ctx)
	for _, s := range d.subsystems {
		g.Go(func() error {
			if err := s.run(gctx); err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
			return nil
		})
	}
	g.Go(func() error { return d.supervise(gctx) })
	window := livenessWindow(sdnotify.WatchdogInterval())
	watchdog := &sdnotify.Watchdog{Notifier: d.notify, Log: d.log, Alive: func() []string { return d.health.Stale(window) }}
	g.Go(func() error { return watchdog.Run(gctx) })
	d.log.Info("agent started", "version", version.Version, "agent_id", d.agentID,
		"http", httpLn.Addr().String(), "socket", d.api.Socket, "state", d.state.Path())

	err = g.Wait()
	d.notify.Stopping()
	d.log.Info("shutting down")
	stopHTTP()
	err = errors.Join(err, <-httpDone)
	stopAPI() // last
	err = errors.Join(err, <-apiDone)
	return err
}

// livenessWindow is how long a watched loop may stay busy with one step
// before the watchdog withholds pings: half of WatchdogSec (30 s for the
// unit's 60 s), so systemd aborts a wedged agent within one WatchdogSec,
// but never under 1 s.
func livenessWindow(pingInterval time.Duration) time.Duration {
	return max(pingInterval, time.Second)
}

// supervise keeps STATUS= in step with health. It is itself a watched
// loop ("daemon"), like every long-running loop of the agent.
func (d *Daemon) supervise(ctx context.Context) error {
	lp := d.health.Loop("daemon")
	defer lp.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	last := ""
	changed := d.health.Changed()
	for {
		lp.Busy()
		if s := d.health.Summary(); s != last {
			d.notify.Status(s)
			last = s
		}
		lp.Idle()
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
			changed = d.health.Changed() // one waiter at a time, never one per tick
		case <-t.C:
		}
	}
}

// StatusAddr is the bound address of the status server (tests).
func (d *Daemon) StatusAddr() string { return d.status.Addr }
