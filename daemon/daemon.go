// Package daemon is the agent's composition root: New builds every
// subsystem from the configuration, and Run starts them, drives sd_notify and
// orders shutdown. It is the only package that imports "the world"; every
// internal package gets its dependencies through constructor arguments.
// docs/architecture.md draws the parts and the arrows between them.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/config"
	"github.com/pipeops/pipeops-vm-agent/internal/controlplane"
	"github.com/pipeops/pipeops-vm-agent/internal/dashboard"
	"github.com/pipeops/pipeops-vm-agent/internal/egress"
	"github.com/pipeops/pipeops-vm-agent/internal/ha"
	"github.com/pipeops/pipeops-vm-agent/internal/health"
	"github.com/pipeops/pipeops-vm-agent/internal/hostinfo"
	"github.com/pipeops/pipeops-vm-agent/internal/kube"
	"github.com/pipeops/pipeops-vm-agent/internal/kubeproxy"
	"github.com/pipeops/pipeops-vm-agent/internal/localapi"
	"github.com/pipeops/pipeops-vm-agent/internal/logging"
	"github.com/pipeops/pipeops-vm-agent/internal/monitor"
	"github.com/pipeops/pipeops-vm-agent/internal/paths"
	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
	"github.com/pipeops/pipeops-vm-agent/internal/routesync"
	"github.com/pipeops/pipeops-vm-agent/internal/sdnotify"
	"github.com/pipeops/pipeops-vm-agent/internal/state"
	"github.com/pipeops/pipeops-vm-agent/internal/statusserver"
	"github.com/pipeops/pipeops-vm-agent/internal/svcresolve"
	"github.com/pipeops/pipeops-vm-agent/internal/tlsconfig"
	"github.com/pipeops/pipeops-vm-agent/internal/tunnel"
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

// Daemon is the running agent: what New built that Run and Status use.
type Daemon struct {
	cfg     *config.Config
	log     *slog.Logger
	state   *state.Store
	health  *health.Tracker
	notify  *sdnotify.Notifier
	agentID string
	started time.Time

	kube       *kube.Manager
	routes     *routesync.Syncer // nil when gateway.enabled is false
	proxy      *kubeproxy.Proxy
	tunnel     *tunnel.Manager // nil when tunnel.enabled is false
	monitoring *monitor.Manager
	link       *controlplane.Client
	statusHTTP *statusserver.Server // protocol.md §11: /health, /ready, /metrics
	dashboard  *dashboard.Server
	api        *localapi.Server // the unix socket pipeopsctl talks to

	ha *haAgent // nil unless ha.enabled (ha.go)

	subsystems []subsystem
}

// New builds the agent from a validated configuration, each part from the
// ones before it: the order below is the dependency order. It opens the
// state store (local I/O only) but starts nothing and dials nothing.
func New(cfg *config.Config, log *slog.Logger) (*Daemon, error) {
	stateDir := cfg.Agent.StateDir
	if stateDir == "" {
		stateDir = paths.StateDir()
	}
	st, err := state.Open(stateDir, log.With(logging.KeyComponent, "state"))
	if err != nil {
		return nil, fmt.Errorf("open state: %w", err)
	}
	agentID, err := resolveAgentID(cfg, st)
	if err != nil {
		return nil, err
	}
	hl := health.New(nil)
	if stall := stallHook(filepath.Dir(socketPath(cfg))); stall != nil {
		hl.SetStall(stall) // test builds only (-tags pipeops_testhooks)
	}
	hl.Require(health.ControlPlane, "connecting to "+cfg.PipeOps.APIURL)
	hl.Require(health.Kubernetes, "connecting to the Kubernetes API")
	reg := newRegistry()
	var subsystems []subsystem
	add := func(name string, run func(ctx context.Context) error) {
		subsystems = append(subsystems, subsystem{name: name, run: run})
	}
	// The link's trust, client certificate and pins: the route REST calls
	// and ip-intel talk to the control plane too, and may not be weaker.
	linkTLS, err := tlsconfig.New(cfg.PipeOps.TLS.Options())
	if err != nil {
		return nil, fmt.Errorf("control-plane TLS: %w", err)
	}

	// Kubernetes: kubeconfig discovery, the agent's own ServiceAccount and
	// RBAC, its token, the API probe behind the "kubernetes" condition, and
	// heartbeat telemetry.
	kc := kube.New(cfg.Kubernetes, os.Getenv, log.With(logging.KeyComponent, "kube"), reg, kubeOptions(cfg, hl, st)...)
	add("kubernetes", kc.Run)

	// High availability across server nodes (ha.go; nil unless ha.enabled):
	// the elector gates the link, route sync and monitoring in Run.
	hac, err := newHA(cfg, log, reg, st, hl, kc, agentID)
	if err != nil {
		return nil, err
	}

	// The Service resolver (protocol.md §14.2), one set of Service and
	// EndpointSlice informers for the proxy and the tunnel. It needs the
	// ServiceAccount's clientset, which exists only after bootstrap; until
	// then Service calls go through the API server's service proxy.
	dialPolicy, err := egress.New(egress.Options{Allow: cfg.Security.AllowedTargets(), Registerer: reg,
		Log: log.With(logging.KeyComponent, "egress")})
	if err != nil {
		return nil, fmt.Errorf("dial policy: %w", err)
	}
	resolver := svcresolve.NewDeferred(kc.WaitClientset, dialPolicy, log.With(logging.KeyComponent, "svcresolve"))
	add("svcresolve", resolver.Run)

	// Ingress route sync (protocol.md §9). Route bodies carry the cluster
	// id registration persisted (§15.1); nothing is sent before it.
	var routes *routesync.Syncer        // nil when gateway.enabled is false
	var ingress kubeproxy.IngressRoutes // nil: the proxy has no route cache (§6.3 rules 1 and 4)
	if cfg.Gateway.Enabled {
		routes, err = routesync.New(routesync.Options{
			Kube:            kc.WaitClientset,
			APIURL:          cfg.PipeOps.APIURL,
			Token:           func() string { return cfg.PipeOps.Token.Reveal() },
			TLS:             linkTLS,
			ClusterID:       func() string { return st.Get().ClusterID },
			RefreshInterval: cfg.Gateway.RefreshInterval.Std(),
			ForceTunnel:     cfg.Gateway.ForceTunnelMode,
			Registerer:      reg,
			Health:          hl,
			Log:             log.With(logging.KeyComponent, "routes"),
		})
		if err != nil {
			return nil, fmt.Errorf("route sync: %w", err)
		}
		ingress = ingressRoutes{routes}
		add("routes", routes.Run)
	}

	// The proxy_request handler (protocol.md §6).
	proxy, err := kubeproxy.New(kubeproxy.Options{
		Log:              log.With(logging.KeyComponent, "proxy"),
		RESTConfig:       kc.ProxyConfig,
		Resolver:         resolver,
		Routes:           ingress,
		MaxInFlight:      cfg.Proxy.MaxInFlight,
		MaxBufferedBytes: cfg.Proxy.MaxBufferedBytes,
		MemoryBudget:     cfg.Proxy.MemoryBudget,
		Egress:           dialPolicy,
		DefaultTimeout:   time.Duration(cfg.Proxy.DefaultTimeout),
		ClusterDomain:    cfg.Kubernetes.ClusterDomain,
		Registerer:       reg,
		KubeUnreachable:  hac.kubeUnreachable(kc.Unreachable), // unchanged without ha.enabled
		KubeFailed:       kc.Nudge,
	})
	if err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}

	// The yamux reverse tunnel (protocol.md §7): the configured forwards and
	// Services through the shared resolver.
	var tun *tunnel.Manager // nil when tunnel.enabled is false; its forward calls then do nothing
	if tc := cfg.Tunnel; tc.Enabled {
		tun = tunnel.New(tunnel.Config{
			StreamWindow:      tc.StreamWindow,
			MaxStreams:        tc.MaxStreams,
			MemoryBudget:      tc.MemoryBudget,
			InactivityTimeout: tc.InactivityTimeout.Std(),
			Forwards:          configuredForwards(tc),
			Health:            hl,
		}, resolver, reg, log.With(logging.KeyComponent, "tunnel"))
		add("tunnel", tun.Run)
	} else {
		// A hello then gets no yamux: binary frames stay JSON (§7.1).
		log.Info("tunnel disabled by configuration (tunnel.enabled: false)")
	}

	// The monitoring stack (protocol.md §12). Its Helm work runs in a
	// pipeops-agent-helm process per round, so the daemon does not link
	// Helm; its ready endpoints become tunnel forwards.
	enabled, disabled := monitoringComponents(cfg.Monitoring)
	monitoring, err := monitor.New(monitor.Options{
		Enabled:     cfg.Monitoring.Enabled,
		Components:  enabled,
		Disabled:    disabled,
		Backend:     helmWorker(cfg, enabled, kc, log),
		State:       st,
		Health:      hl,
		Log:         log.With(logging.KeyComponent, "monitoring"),
		OnEndpoints: func(eps []monitor.Endpoint) { forwardMonitoring(tun, eps, log) },
	})
	if err != nil {
		return nil, fmt.Errorf("monitoring: %w", err)
	}
	add("monitoring", monitoring.Run)

	// The control-plane link (protocol.md §2–5, §8). Everything above that
	// the control plane drives attaches here: the handlers of its messages,
	// what runs on every (re)connection and what rides on heartbeats.
	link, err := controlplane.New(controlplane.Options{
		Config:   cfg,
		AgentID:  agentID,
		State:    st,
		Health:   hl,
		Log:      log.With(logging.KeyComponent, "controlplane"),
		Metrics:  reg,
		Cluster:  kubeCluster{kc},
		Locality: newLocality(cfg, linkTLS, st, kc, log.With(logging.KeyComponent, "locality")),
		Active:   hac.active(),  // nil without ha.enabled
		MayDial:  hac.mayDial(), // nil without ha.enabled
	})
	if err != nil {
		return nil, fmt.Errorf("control-plane link: %w", err)
	}
	link.Register(proxy)
	link.OnShutdown(proxy.Drain) // in-flight calls answer before the link closes (§8.7)
	if tun != nil {
		link.Register(tun) // gateway_hello
	}
	if routes != nil {
		// Every (re)connection may follow a control-plane restart that lost
		// the routes: send the full set again (§9.2).
		link.OnConnect(func(context.Context, protocol.Conn) { routes.Resync() })
		link.AddHeartbeatContributor(func(_ context.Context, hb *protocol.Heartbeat) {
			hb.Metadata.GatewayRoutes = routes.RouteCount() // managed routes only (§13.11)
			hb.Metadata.IsPrivate = routes.IsPrivate()
		})
	}
	link.AddHeartbeatContributor(monitoring.FillHeartbeat)
	hac.attach(link)
	add("controlplane", link.Run)

	// The local servers, last: they show all of the above. The loopback
	// HTTP server (protocol.md §11) with the dashboard on it, and the local
	// API on the unix socket.
	d := &Daemon{cfg: cfg, log: log, state: st, health: hl, notify: &sdnotify.Notifier{Log: log}, agentID: agentID, started: time.Now(),
		kube: kc, routes: routes, proxy: proxy, tunnel: tun, monitoring: monitoring, link: link, ha: hac}
	d.statusHTTP = statusserver.New(cfg.Agent.BindAddress, cfg.Agent.Port, hl, link, reg, log.With(logging.KeyComponent, "http"))
	d.dashboard = dashboard.New(dashboard.Options{
		Snapshot:        d.Status,
		Changed:         hl.Changed,
		EnableSSE:       cfg.Agent.EnableSSE,
		EnableWebSocket: cfg.Agent.EnableWebSocket,
		LoopbackOnly:    statusserver.IsLoopback(cfg.Agent.BindAddress),
		Log:             log.With(logging.KeyComponent, "dashboard"),
		Registerer:      reg,
	})
	d.dashboard.Register(d.statusHTTP.Handle)
	add("dashboard", d.dashboard.Run)
	d.api = localapi.New(localapi.Options{Socket: socketPath(cfg), Status: d, Monitoring: monitoring, HA: hac.api(),
		Log: log.With(logging.KeyComponent, "localapi")})
	d.subsystems = subsystems
	return d, nil
}

// newRegistry is the agent's Prometheus registry, with the Go and process
// collectors and pipeops_agent_info.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	info := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "pipeops_agent_info", Help: "Build information of the running agent."},
		[]string{"version", "commit", "go_version"})
	v := version.Get()
	info.WithLabelValues(v.Version, v.GitCommit, v.GoVersion).Set(1)
	reg.MustRegister(info)
	return reg
}

// socketPath is the local API socket's path.
func socketPath(cfg *config.Config) string {
	if cfg.Agent.Socket != "" {
		return cfg.Agent.Socket
	}
	return paths.Socket()
}

// resolveAgentID applies protocol.md §8.1: configured, else persisted, else
// derived from the host and persisted at once.
func resolveAgentID(cfg *config.Config, st *state.Store) (string, error) {
	if cfg.Agent.ID != "" {
		return cfg.Agent.ID, nil
	}
	if id := st.Get().AgentID; id != "" {
		return id, nil
	}
	id := hostinfo.AgentID(hostinfo.Hostname(), hostinfo.Root("").MachineID(), hostinfo.FirstMAC())
	if err := st.Update(func(s *state.State) error { s.AgentID = id; return nil }); err != nil {
		return "", fmt.Errorf("persist agent id: %w", err)
	}
	return id, nil
}

// Status is the local API's snapshot (and the dashboard's).
func (d *Daemon) Status(ctx context.Context) apitype.StatusResponse {
	v := version.Get()
	ok, reasons := d.health.Ready()
	resp := apitype.StatusResponse{
		Version: v.Version, Commit: v.GitCommit, AgentID: d.agentID, ClusterName: d.cfg.Agent.Name,
		ClusterID: d.state.Get().ClusterID, StartedAt: d.started, Ready: ok, NotReady: reasons,
		Kubernetes: d.kube.Status(ctx),
		Proxy:      d.proxy.Status(),
		Monitoring: d.monitoring.Status(),
	}
	for _, c := range d.health.Snapshot() {
		resp.Conditions = append(resp.Conditions, apitype.Condition(c))
	}
	d.link.FillStatus(ctx, &resp)
	if d.tunnel != nil {
		resp.Tunnel = d.tunnel.Status()
	} else {
		for _, f := range d.cfg.Tunnel.Forwards {
			resp.Tunnel.Forwards = append(resp.Tunnel.Forwards, apitype.Forward{Name: f.Name, LocalAddr: f.LocalAddr})
		}
	}
	if d.routes != nil {
		resp.Routes = d.routes.Status()
	}
	d.ha.fillStatus(&resp) // nil-safe: nothing without ha.enabled
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
	httpLn, err := d.statusHTTP.Listen()
	if err != nil {
		apiLn.Close()
		return err
	}
	apiCtx, stopAPI := context.WithCancel(context.WithoutCancel(ctx))
	apiDone := make(chan error, 1)
	go func() { apiDone <- d.api.Serve(apiCtx, apiLn) }()
	httpCtx, stopHTTP := context.WithCancel(context.WithoutCancel(ctx))
	httpDone := make(chan error, 1)
	go func() { httpDone <- d.statusHTTP.Serve(httpCtx, httpLn) }()

	// READY before any remote step: a control-plane outage must not fail
	// `systemctl start`. And before the loops start, so READY=1 is the first
	// thing systemd hears: no STATUS= or WATCHDOG=1 ahead of it.
	d.notify.Ready("starting: connecting to control plane")
	g, gctx := errgroup.WithContext(ctx)
	for _, s := range d.ha.gate(d.subsystems) { // ha.go: the leader-only ones run while this agent leads
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
	if !errors.Is(err, ha.ErrTermEnded) { // that one restarts in place (main.go): no STOPPING=1
		d.notify.Stopping()
	}
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

// SetLogBuffer hands the dashboard the buffer that the process's logger
// feeds (logging.Options.Sink), so the page shows recent warnings and errors.
// Call it between New and Run.
func (d *Daemon) SetLogBuffer(b *dashboard.LogBuffer) { d.dashboard.SetLogs(b) }

// StatusAddr is the bound address of the status server (tests).
func (d *Daemon) StatusAddr() string { return d.statusHTTP.Addr }
