package charts

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"helm.sh/helm/v3/pkg/release"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/backoff"
	"github.com/pipeops/pipeops-vm-agent/internal/logging"
)

// ErrDisabled is returned by Install when monitoring.enabled is false.
var ErrDisabled = &apitype.Error{Code: apitype.CodeBadRequest,
	Message: "the monitoring stack is disabled in the agent's configuration",
	Hint:    "set \"monitoring: {enabled: true}\" in /etc/pipeops/agent.d/50-monitoring.yaml (with version: 1), then \"sudo systemctl restart pipeops-agent\""}

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
	for {
		err := m.runRound(ctx)
		if ctx.Err() != nil {
			return nil
		}
		delay := m.opts.Resync
		if err != nil {
			delay = bo.Next()
			if errors.Is(err, errNoClusterID) {
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

// Kick starts a round now (or right after the current one).
func (m *Manager) Kick() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// runRound runs one round unless uninstalled, and answers the Install calls
// that were waiting for it.
func (m *Manager) runRound(ctx context.Context) error {
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
	err := m.round(rctx)
	m.roundMu.Unlock()
	cancel()

	m.mu.Lock()
	m.cancelRound = nil
	m.lastRound = m.opts.Now()
	m.lastErr = ""
	if err != nil {
		m.lastErr = oneLine(err)
	}
	m.mu.Unlock()
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

// round reconciles every component in order. Each step is non-fatal: a
// release that fails does not stop the next one.
func (m *Manager) round(ctx context.Context) error {
	h, cs, err := m.env(ctx)
	if err != nil {
		err = fmt.Errorf("waiting for the Kubernetes API: %w", err)
		m.markAll(apitype.ReleasePending, err.Error())
		return err
	}
	f, err := m.gatherFacts(ctx, cs)
	if err != nil {
		m.markAll(apitype.ReleasePending, err.Error())
		return err
	}
	m.mu.Lock()
	m.profile = f.Profile
	m.mu.Unlock()
	var errs []error
	ready := map[string]*release.Release{}
	for i := range m.opts.Components {
		c := &m.opts.Components[i]
		rel, err := m.reconcile(ctx, c, f, h, cs)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s/%s: %w", c.Namespace, c.Release, err))
			continue
		}
		if rel != nil {
			ready[c.Name] = rel
		}
	}
	m.setEndpoints(ready)
	return errors.Join(errs...)
}

func (m *Manager) markAll(stateName, reason string) {
	for i := range m.opts.Components {
		m.setRelease(&m.opts.Components[i], stateName, reason, nil)
	}
}

// setEndpoints advertises the ready components and tells OnEndpoints when
// the set changed.
func (m *Manager) setEndpoints(ready map[string]*release.Release) {
	eps := map[string]Endpoint{}
	add := func(name, comp string) {
		c, rel := m.component(comp), ready[comp]
		if c == nil || rel == nil {
			return
		}
		if e, ok := m.endpointFor(name, c, rel.Manifest); ok {
			eps[name] = e
		}
	}
	add("prometheus", "prometheus")
	if m.opts.Grafana {
		add("grafana", "prometheus")
	}
	add("loki", "loki")
	m.mu.Lock()
	changed := !maps.Equal(eps, m.endpoints)
	m.endpoints = eps
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
	events, unsub := m.subscribe()
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
			for {
				select {
				case ev := <-events:
					emit(ev)
				default:
					return err
				}
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Uninstall removes every release of the stack, in reverse order, and stops
// reconciling until Install or a restart: keep monitoring.enabled false to
// keep it uninstalled. Namespaces, CRDs and PersistentVolumeClaims stay.
func (m *Manager) Uninstall(ctx context.Context, emit func(apitype.MonitoringEvent)) error {
	events, unsub := m.subscribe()
	defer unsub()
	m.mu.Lock()
	m.suspended = true
	if m.cancelRound != nil {
		m.cancelRound() // a round may be waiting minutes for readiness
	}
	m.mu.Unlock()
	m.roundMu.Lock()
	defer m.roundMu.Unlock()
	flush := func() {
		for {
			select {
			case ev := <-events:
				emit(ev)
			default:
				return
			}
		}
	}
	defer flush()
	h, _, err := m.env(ctx)
	if err != nil {
		return fmt.Errorf("reach the Kubernetes API: %w", err)
	}
	var errs []error
	for _, c := range slices.Backward(m.opts.Components) {
		c := &c
		m.setRelease(c, apitype.ReleaseUninstalling, "", nil)
		flush()
		if err := h.uninstall(c.Namespace, c.Release, m.opts.Timeout); err != nil {
			err = fmt.Errorf("helm uninstall %s/%s: %w", c.Namespace, c.Release, err)
			m.setRelease(c, apitype.ReleaseFailed, err.Error(), nil)
			errs = append(errs, err)
			continue
		}
		m.log.Info("release uninstalled", logging.KeyRelease, c.Release, "namespace", c.Namespace)
		m.setRelease(c, apitype.ReleaseUninstalled, "\"pipeopsctl monitoring install\" installs it again", func(r *apitype.Release) { r.Revision = 0 })
		flush()
	}
	m.setEndpoints(nil)
	return errors.Join(errs...)
}

// oneLine joins the errors of a round (errors.Join puts each on its own
// line) for STATUS=-style one-line places.
func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", "; ") }
