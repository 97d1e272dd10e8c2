// Package monitor is the daemon's side of the monitoring stack (protocol.md
// §12): when to reconcile (a round at start, backoff after a failure, a
// read-only resync after a good one), the stack's status and progress
// events, the endpoints advertised in heartbeats, and the generated
// credentials in the state store. It does no Helm work itself: each round
// is handed to a Backend, which in the daemon is a short-lived worker
// process (Exec) running package charts, so the agent never links Helm and
// holds no Helm memory between rounds. Tests may run charts in process.
package monitor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/backoff"
	"github.com/pipeops/pipeops-vm-agent/internal/health"
	"github.com/pipeops/pipeops-vm-agent/internal/logging"
	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
	"github.com/pipeops/pipeops-vm-agent/internal/state"
)

// HealthCondition is the (not required) health condition this package sets.
const HealthCondition = "monitoring"

// Keys of generated credentials in state.State.Secrets (protocol.md §10, §13.12).
const (
	SecretGrafanaPassword    = "grafana_admin_password"
	SecretPrometheusPassword = "prometheus_password"
	SecretLokiPassword       = "loki_password"
)

// ErrDisabled is returned by Install when monitoring.enabled is false.
var ErrDisabled = &apitype.Error{Code: apitype.CodeBadRequest,
	Message: "the monitoring stack is disabled in the agent's configuration",
	Hint:    "set \"monitoring: {enabled: true}\" in /etc/pipeops/agent.d/50-monitoring.yaml (with version: 1), then \"sudo systemctl restart pipeops-agent\""}

// Component is one release of the stack and where its chart comes from.
type Component struct {
	// Name is the config key: metrics_server, vpa, coredns, traefik,
	// cert_manager, prometheus or loki. coredns is no Helm release: Release
	// names its ConfigMap and Chart is empty.
	Name      string `json:"name"`
	Release   string `json:"release"`
	Namespace string `json:"namespace"`
	// Repo + Chart + Version, or Chart as an oci:// reference or an absolute
	// path to a .tgz or chart directory.
	Repo    string `json:"repo,omitempty"`
	Chart   string `json:"chart"`
	Version string `json:"version,omitempty"`
	// Values are the user's overrides, deep-merged over the agent's defaults.
	Values map[string]any `json:"values,omitempty"`
}

// Endpoint is one advertised monitoring service. Password is a secret: never log it.
type Endpoint struct {
	Name      string `json:"name"` // prometheus, loki or grafana
	Namespace string `json:"namespace"`
	Service   string `json:"service"`
	Port      int    `json:"port"`
	URL       string `json:"url"`
	Username  string `json:"username"`
	Password  string `json:"password"`
	SSL       bool   `json:"ssl"`
}

// ReleaseInfo is what Helm recorded for a release. A zero Revision with no
// chart clears the revision (after an uninstall).
type ReleaseInfo struct {
	Revision int    `json:"revision"`
	Chart    string `json:"chart,omitempty"`
	Version  string `json:"version,omitempty"`
}

// Sink is what a Backend reports to while it works.
type Sink interface {
	// SetRelease records a component's new state; info, when not nil,
	// updates what Helm recorded.
	SetRelease(component, state, reason string, info *ReleaseInfo)
	// Secret returns the stored credential key.
	Secret(key string) (string, bool)
	// PutSecret stores value under key unless a credential is already
	// stored, and returns the stored one. origin says where value came from.
	PutSecret(key, value, origin string) (string, error)
	// ClusterID is the control plane's id for this cluster ("" until registered).
	ClusterID() string
}

// Pending marks every component pending for why (a round that could not
// start: no Kubernetes API yet, no facts) and returns why.
func Pending(s Sink, comps []Component, why error) error {
	for _, c := range comps {
		s.SetRelease(c.Name, apitype.ReleasePending, why.Error(), nil)
	}
	return why
}

// NoAPI are the errors of a round or an uninstall that cannot reach the
// Kubernetes API, worded the same whichever Backend ran them.
func NoAPI(action string, err error) error {
	if action == "uninstall" {
		return fmt.Errorf("reach the Kubernetes API: %w", err)
	}
	return fmt.Errorf("waiting for the Kubernetes API: %w", err)
}

// Result is what a good round learned.
type Result struct {
	// Profile is the size the stack was rendered for.
	Profile string `json:"profile,omitempty"`
	// Complete says the round went through every component, so Endpoints is
	// the whole set of ready ones. A round that stopped early (no API,
	// cancelled) leaves the advertised endpoints as they were.
	Complete  bool       `json:"complete,omitempty"`
	Endpoints []Endpoint `json:"endpoints,omitempty"`
}

// Backend does the Helm work. Calls never overlap.
type Backend interface {
	// Round brings every component to its desired state and waits until it
	// is ready. A failed component does not stop the next one.
	Round(ctx context.Context, s Sink) (Result, error)
	// Uninstall removes every release, in reverse install order.
	Uninstall(ctx context.Context, s Sink) error
}

// Options configure a Manager. Zero durations take the defaults of protocol.md §12.
type Options struct {
	Enabled bool
	// Components are the enabled releases, in install order.
	Components []Component
	Backend    Backend
	State      *state.Store
	Health     *health.Tracker // optional
	Log        *slog.Logger
	// OnEndpoints is called when the set of ready endpoints changes (the
	// daemon registers tunnel forwards for them). It must not block.
	OnEndpoints func([]Endpoint)
	// RetryBase and RetryMax bound the bootstrap's backoff (30 s → 10 min).
	RetryBase, RetryMax time.Duration
	// Resync is how often a healthy stack is compared again (reads only).
	Resync time.Duration
	// Now is the clock (tests).
	Now func() time.Time

	// Disabled are the components switched off in the configuration; Status
	// lists them (state disabled) after the others.
	Disabled []Component
}

// Manager reconciles the stack through its Backend. Run drives it; Install
// and Uninstall are the local API's actions. Safe for concurrent use.
type Manager struct {
	opts Options
	log  *slog.Logger

	// roundMu serializes rounds and uninstalls: Backend calls never overlap.
	roundMu sync.Mutex

	mu          sync.Mutex
	releases    map[string]*apitype.Release // by component name
	endpoints   []Endpoint
	profile     string
	lastErr     string
	lastRound   time.Time
	nextRetry   time.Time
	suspended   bool
	cancelRound context.CancelFunc
	waiters     []chan error
	subs        map[int]chan apitype.MonitoringEvent
	nextSub     int
	kick        chan struct{}
}

// New returns a manager. It starts nothing.
func New(o Options) (*Manager, error) {
	if o.State == nil {
		return nil, errors.New("monitor: a state store is required")
	}
	if o.Backend == nil {
		return nil, errors.New("monitor: a backend is required")
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.RetryBase, 30*time.Second)
	def(&o.RetryMax, 10*time.Minute)
	def(&o.Resync, 10*time.Minute)
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	m := &Manager{opts: o, log: o.Log, releases: map[string]*apitype.Release{},
		subs: map[int]chan apitype.MonitoringEvent{}, kick: make(chan struct{}, 1)}
	for _, c := range o.Components {
		if !o.Enabled {
			break // Status lists releases only once something acts on them
		}
		m.releases[c.Name] = &apitype.Release{Component: c.Name, Name: c.Release, Namespace: c.Namespace,
			Chart: c.Chart, Version: c.Version, State: apitype.ReleasePending, Reason: "waiting for the first round"}
	}
	for _, c := range o.Disabled {
		if !o.Enabled {
			break
		}
		m.releases[c.Name] = &apitype.Release{Component: c.Name, Name: c.Release, Namespace: c.Namespace, Chart: c.Chart,
			State: apitype.ReleaseDisabled, Reason: "off in the configuration (monitoring.components." + c.Name + ".enabled: false)"}
	}
	return m, nil
}

// Run reconciles until ctx ends, then returns nil:
//  1. a round at start (the daemon is already serving; nothing waits for it);
//  2. after a failed round, another after 30 s, doubling up to 10 min;
//  3. after a good round, a read-only comparison every Resync;
//  4. at once when Install asks for it.
func (m *Manager) Run(ctx context.Context) error {
	if !m.opts.Enabled {
		<-ctx.Done()
		return nil
	}
	bo := backoff.New(m.opts.RetryBase, m.opts.RetryMax)
	lim := logging.NewLimiter(5*time.Minute, m.opts.Now)
	// A watched loop: a round waits on the Helm worker under its own
	// timeouts (idle); the bookkeeping between rounds is its step.
	lp := m.opts.Health.Loop("monitoring")
	defer lp.Done()
	for {
		lp.Idle()
		err := m.RunRound(ctx)
		lp.Busy()
		if ctx.Err() != nil {
			return nil
		}
		delay := m.opts.Resync
		if err != nil {
			delay = bo.Next()
			if errors.Is(err, ErrNoClusterID) {
				// Registration usually follows within seconds; don't wait minutes for Grafana.
				delay = min(delay, 10*time.Second)
			}
			if ok, n := lim.Allow(err.Error()); ok {
				m.log.Warn("monitoring stack is not ready; retrying", logging.KeyErr, err,
					logging.KeyAttempt, bo.Attempt(), logging.KeyDelay, delay.Round(time.Second), "suppressed", n)
			}
		} else {
			if bo.Attempt() > 0 {
				m.log.Info("monitoring stack ready", logging.KeyAttempt, bo.Attempt())
			}
			bo.Reset()
			lim.Reset()
		}
		m.mu.Lock()
		m.nextRetry = m.opts.Now().Add(delay)
		m.mu.Unlock()
		lp.Idle()
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		case <-m.kick:
			t.Stop()
		}
	}
}

// ErrNoClusterID is wrapped by a round that needs the cluster id (Grafana's
// root_url) before registration has given one.
var ErrNoClusterID = errors.New("waiting for the cluster id from registration (Grafana's root_url contains it)")

// Kick starts a round now (or right after the current one).
func (m *Manager) Kick() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// RunRound runs one round unless uninstalled, and answers the Install
// calls that were waiting for it.
func (m *Manager) RunRound(ctx context.Context) error {
	m.mu.Lock()
	waiters := m.waiters
	m.waiters = nil
	if m.suspended {
		m.mu.Unlock()
		for _, w := range waiters {
			w <- errors.New("monitoring was uninstalled meanwhile")
		}
		return nil
	}
	rctx, cancel := context.WithCancel(ctx)
	m.cancelRound = cancel
	m.mu.Unlock()

	m.roundMu.Lock()
	var res Result
	err := rctx.Err() // an Uninstall that ran first cancelled this round before it started
	if err == nil {
		res, err = m.opts.Backend.Round(rctx, m.Sink())
	}
	m.roundMu.Unlock()
	cancel()

	m.mu.Lock()
	m.cancelRound = nil
	m.lastRound = m.opts.Now()
	m.lastErr = ""
	if res.Profile != "" {
		m.profile = res.Profile
	}
	if err != nil {
		m.lastErr = oneLine(err)
	}
	m.mu.Unlock()
	if res.Complete {
		m.setEndpoints(res.Endpoints)
	}
	if h := m.opts.Health; h != nil {
		if err != nil {
			h.Set(HealthCondition, false, oneLine(err))
		} else {
			h.Set(HealthCondition, true, "ready")
		}
	}
	for _, w := range waiters {
		w <- err
	}
	return err
}

// setEndpoints advertises eps and tells OnEndpoints when the set changed.
func (m *Manager) setEndpoints(eps []Endpoint) {
	byName := func(s []Endpoint) map[string]Endpoint {
		out := map[string]Endpoint{}
		for _, e := range s {
			out[e.Name] = e
		}
		return out
	}
	m.mu.Lock()
	changed := !maps.Equal(byName(eps), byName(m.endpoints))
	m.endpoints = slices.Clone(eps)
	m.mu.Unlock()
	if changed && m.opts.OnEndpoints != nil {
		m.opts.OnEndpoints(m.Endpoints())
	}
}

// Install asks for a round now and reports its progress through emit until
// it ends. It also lifts a previous Uninstall.
func (m *Manager) Install(ctx context.Context, emit func(apitype.MonitoringEvent)) error {
	if !m.opts.Enabled {
		return ErrDisabled
	}
	events, unsub := m.Subscribe()
	defer unsub()
	done := make(chan error, 1)
	m.mu.Lock()
	m.suspended = false
	m.waiters = append(m.waiters, done)
	m.mu.Unlock()
	m.Kick()
	for {
		select {
		case ev := <-events:
			emit(ev)
		case err := <-done:
			drain(events, emit)
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Uninstall removes every release of the stack, in reverse order, and stops
// reconciling until Install or a restart: keep monitoring.enabled false to
// keep it uninstalled. Namespaces, CRDs and PersistentVolumeClaims stay.
func (m *Manager) Uninstall(ctx context.Context, emit func(apitype.MonitoringEvent)) error {
	events, unsub := m.Subscribe()
	defer unsub()
	defer drain(events, emit)
	m.mu.Lock()
	m.suspended = true
	if m.cancelRound != nil {
		m.cancelRound() // a round may be waiting minutes for readiness
	}
	m.mu.Unlock()
	m.roundMu.Lock()
	err := m.opts.Backend.Uninstall(ctx, m.Sink())
	m.roundMu.Unlock()
	m.setEndpoints(nil)
	return err
}

func drain(events <-chan apitype.MonitoringEvent, emit func(apitype.MonitoringEvent)) {
	for {
		select {
		case ev := <-events:
			emit(ev)
		default:
			return
		}
	}
}

// Status is the monitoring section of the local status API.
func (m *Manager) Status() apitype.MonitoringStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := apitype.MonitoringStatus{Enabled: m.opts.Enabled, Profile: m.profile, LastError: m.lastErr,
		LastRound: m.lastRound, NextRetry: m.nextRetry, Suspended: m.suspended}
	for _, e := range m.endpoints {
		st.Endpoints = append(st.Endpoints, apitype.MonitoringEndpoint{Name: e.Name, URL: e.URL})
	}
	for _, c := range slices.Concat(m.opts.Components, m.opts.Disabled) {
		if r := m.releases[c.Name]; r != nil {
			st.Releases = append(st.Releases, *r)
		}
	}
	return st
}

// Endpoints returns the ready components' endpoints, in a fixed order.
func (m *Manager) Endpoints() []Endpoint {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Endpoint
	for _, n := range []string{"prometheus", "loki", "grafana"} {
		for _, e := range m.endpoints {
			if e.Name == n {
				out = append(out, e)
			}
		}
	}
	return out
}

// FillHeartbeat is the control-plane client's heartbeat contributor: the
// prometheus_*, loki_* and grafana_* fields, only for ready components.
// *_ssl tells the truth about the URL's scheme (the reference always sent
// prometheus_ssl: true for an http URL).
func (m *Manager) FillHeartbeat(_ context.Context, hb *protocol.Heartbeat) {
	for _, e := range m.Endpoints() {
		ssl := e.SSL
		switch e.Name {
		case "prometheus":
			hb.PrometheusURL, hb.PrometheusUsername, hb.PrometheusPassword, hb.PrometheusSSL = e.URL, e.Username, e.Password, &ssl
		case "loki":
			hb.LokiURL, hb.LokiUsername, hb.LokiPassword, hb.LokiSSL = e.URL, e.Username, e.Password, &ssl
		case "grafana":
			hb.GrafanaURL, hb.GrafanaUsername, hb.GrafanaPassword, hb.GrafanaSSL = e.URL, e.Username, e.Password, &ssl
		}
	}
}

// Sink is the manager as its Backend's sink: releases land in Status and
// in the events, credentials in the state store.
func (m *Manager) Sink() Sink { return sink{m} }

// Subscribe returns a channel of progress events and its cancel function.
// A slow reader loses intermediate events; it never blocks a round.
func (m *Manager) Subscribe() (<-chan apitype.MonitoringEvent, func()) {
	m.mu.Lock()
	defer m.mu.Unlock()
	id := m.nextSub
	m.nextSub++
	ch := make(chan apitype.MonitoringEvent, 64)
	m.subs[id] = ch
	return ch, func() {
		m.mu.Lock()
		delete(m.subs, id)
		m.mu.Unlock()
	}
}

// sink is the Manager as its Backend's Sink.
type sink struct{ m *Manager }

func (s sink) SetRelease(component, stateName, reason string, info *ReleaseInfo) {
	m := s.m
	m.mu.Lock()
	defer m.mu.Unlock()
	r := m.releases[component]
	if r == nil {
		r = &apitype.Release{Component: component}
		for _, c := range m.opts.Components {
			if c.Name == component {
				r.Name, r.Namespace = c.Release, c.Namespace
			}
		}
		m.releases[component] = r
	}
	r.State, r.Reason, r.UpdatedAt = stateName, reason, m.opts.Now()
	if info != nil {
		r.Revision = info.Revision
		if info.Chart != "" {
			r.Chart, r.Version = info.Chart, info.Version
		}
	}
	ev := apitype.MonitoringEvent{Time: r.UpdatedAt, Release: *r}
	for _, ch := range m.subs {
		select {
		case ch <- ev:
		default: // a slow reader loses intermediate steps, never blocks the round
		}
	}
}

func (s sink) Secret(key string) (string, bool) {
	v := s.m.opts.State.Get().Secrets[key]
	return v, v != ""
}

func (s sink) PutSecret(key, value, origin string) (string, error) {
	if value == "" {
		return "", errors.New("monitor: empty credential for " + key)
	}
	stored := value
	err := s.m.opts.State.Update(func(st *state.State) error {
		if v := st.Secrets[key]; v != "" { // another round won the race
			stored = v
			return nil
		}
		if st.Secrets == nil {
			st.Secrets = map[string]string{}
		}
		st.Secrets[key] = value
		return nil
	})
	if err != nil {
		return "", err
	}
	if stored == value {
		s.m.log.Info("stored a monitoring credential", "key", key, "origin", origin)
	}
	return stored, nil
}

func (s sink) ClusterID() string { return s.m.opts.State.Get().ClusterID }

// oneLine joins the errors of a round (errors.Join puts each on its own
// line) for STATUS=-style one-line places.
func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", "; ") }
