package controlplane

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/backoff"
	"github.com/pipeops/pipeops-vm-agent/internal/logging"
	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
	"github.com/pipeops/pipeops-vm-agent/internal/state"
)

// errReregister ends a connection after `error: not registered / cluster
// not found` (§8.6).
var errReregister = errors.New("control plane does not know this cluster; registering again")

// heartbeatFreshness is how old the last heartbeat may be while healthy (§8.5).
const heartbeatFreshness = 90 * time.Second

// outcome is how one attempt ended.
type outcome struct {
	err  error
	up   time.Duration // how long the connection was up and heartbeating
	next bool          // go on at once without backoff (controller → gateway switch)
}

// Run drives the one reconnect loop (§8.4) until ctx ends, then closes the
// connection with 1000 and returns nil. It never gives up.
func (c *Client) Run(ctx context.Context) error {
	bo := backoff.New(c.cfg.PipeOps.Reconnect.Interval.Std(), c.cfg.PipeOps.Reconnect.MaxInterval.Std())
	if c.jitter != nil {
		bo.Rand = c.jitter
	}
	hb := c.cfg.Agent.HeartbeatInterval.Std()
	immediate := false // the last retry skipped the backoff
	// The link supervisor is a watched loop: dialing, registering and
	// waiting are idle (each under its own timeout); deciding what to do
	// next and each wake-up of a live connection are its steps.
	c.lp = c.health.Loop("link")
	defer c.lp.Done()
	for {
		c.lp.Idle()
		o := c.attempt(ctx)
		c.lp.Busy()
		if ctx.Err() != nil {
			c.drain() // no-op after a connected shutdown; joins what a lost connection left
			c.updateLink(func(l *apitype.LinkStatus) { l.State = apitype.LinkDisconnected; l.NextRetry = time.Time{} })
			c.notReady("agent is shutting down")
			return nil
		}
		if o.next {
			continue
		}
		if o.up >= hb {
			bo.Reset()
		}
		// A switch back to the controller (§8.6) is retried at once, but
		// never twice in a row: a control plane that keeps forgetting the
		// cluster gets the backoff.
		var ae *AuthError
		if !immediate && (errors.Is(o.err, errReregister) || errors.As(o.err, &ae) && ae.Mode == ModeGateway) {
			immediate = true
			c.metrics.reconnects.Inc()
			c.noteFailure(o.err, 0)
			continue
		}
		immediate = false
		delay := bo.Next()
		if errors.As(o.err, &ae) && ae.Mode == ModeController {
			// The install token is rejected: retry at the cap (§8.6),
			// jittered, so a fleet whose token was revoked does not retry
			// in lockstep.
			delay = bo.AtCap()
		}
		c.metrics.reconnects.Inc()
		c.noteFailure(o.err, delay)
		c.lp.Idle()
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
	}
}

// noteFailure records why the last attempt ended: link status, /ready
// reason and one rate-limited log line per distinct error.
func (c *Client) noteFailure(err error, delay time.Duration) {
	if err == nil {
		err = errors.New("connection ended")
	}
	msg := err.Error()
	now := time.Now()
	c.updateLink(func(l *apitype.LinkStatus) {
		l.State = apitype.LinkReconnecting
		l.Reconnects++
		l.LastError, l.LastErrorAt = msg, now
		l.NextRetry = now.Add(delay)
		l.ConnectedSince = time.Time{}
	})
	c.notReady(fmt.Sprintf("reconnecting in %s: %s", delay.Round(100*time.Millisecond), msg))
	if ok, n := c.limiter.Allow(msg); ok {
		c.log.Warn("control-plane link down; retrying", logging.KeyErr, msg, logging.KeyDelay, delay.Round(time.Millisecond).String(), logging.KeyRepeatsSuppressed, n)
	}
}

// attempt makes one connection (controller or gateway) and keeps it until
// it ends.
func (c *Client) attempt(ctx context.Context) outcome {
	st := c.st.Get()
	token, ca, err := c.credentials(ctx)
	if err != nil {
		return outcome{err: err}
	}
	fp := fingerprint(token, ca)
	if st.ClusterID != "" && st.GatewayWSURL != "" && st.CredentialsFingerprint == fp {
		if !c.gwFailSince.IsZero() && time.Since(c.gwFailSince) >= c.gatewayFallback {
			// No dead end (an addition to §8.4, docs/link.md): the
			// cached gateway kept failing, so ask the controller once, with
			// a resume registration keeping cluster_id, for the current
			// gateway; then keep retrying whatever it answers.
			c.log.Warn("the cached gateway keeps failing; asking the controller for the current gateway (resume registration)",
				"failing_for", time.Since(c.gwFailSince).Round(time.Second).String())
			c.gwFailSince = time.Now()
			return c.controller(ctx, st, token, ca)
		}
		return c.gateway(ctx, st)
	}
	return c.controller(ctx, st, token, ca)
}

// controller registers on the controller WebSocket (§8.3), then switches
// to the gateway or, without one, stays.
func (c *Client) controller(ctx context.Context, st state.State, token, ca string) outcome {
	version, err := c.version(ctx)
	if err != nil {
		return outcome{err: err}
	}
	u, err := ControllerURL(c.cfg.PipeOps.APIURL)
	if err != nil {
		return outcome{err: err}
	}
	c.connecting(ModeController, u)
	cn, err := c.dial(ctx, ModeController, u)
	if err != nil {
		return outcome{err: err}
	}
	rs, err := c.register(ctx, cn, st, version, token, ca)
	if err != nil {
		cn.close(websocket.CloseNormalClosure, "registration failed")
		return outcome{err: err}
	}
	if rs.GatewayWSURL != "" {
		cn.close(websocket.CloseNormalClosure, "switching to gateway")
		return outcome{next: true}
	}
	c.log.Warn("register_success carried no gateway_ws_url; staying on the controller WebSocket", logging.KeyClusterID, rs.ClusterID)
	return c.serve(ctx, cn)
}

// gateway resumes on the cached gateway (§8.3) without registering.
func (c *Client) gateway(ctx context.Context, st state.State) outcome {
	uuid := st.ClusterUUID
	if uuid == "" {
		uuid = st.ClusterID
	}
	u, err := GatewayURL(c.cfg.PipeOps.APIURL, st.GatewayWSURL, uuid)
	if err != nil {
		c.clearGateway()
		return outcome{err: err}
	}
	c.bestEffortVersion(ctx)
	c.connecting(ModeGateway, u)
	cn, err := c.dial(ctx, ModeGateway, u)
	var ae *AuthError
	if errors.As(err, &ae) {
		// §8.6: forget the gateway; the next attempt registers through the
		// controller with cluster_id (mode resume).
		c.clearGateway()
		return outcome{err: err}
	}
	if err != nil {
		if c.gwFailSince.IsZero() && ctx.Err() == nil {
			c.gwFailSince = time.Now()
		}
		return outcome{err: err}
	}
	return c.serve(ctx, cn)
}

func (c *Client) connecting(mode, u string) {
	c.updateLink(func(l *apitype.LinkStatus) {
		if l.State != apitype.LinkReconnecting {
			l.State = apitype.LinkConnecting
		}
		l.Mode, l.URL = mode, redactURL(u)
	})
}

// serve keeps a registered (or resumed) connection: heartbeat at once, the
// connect hooks, then a heartbeat every interval until the connection ends.
func (c *Client) serve(ctx context.Context, cn *conn) outcome {
	start := time.Now()
	defer func() {
		c.mu.Lock()
		if c.cur == cn {
			c.cur = nil
		}
		c.mu.Unlock()
	}()
	now := time.Now()
	c.updateLink(func(l *apitype.LinkStatus) {
		l.State, l.Mode, l.Registered, l.ConnectedSince, l.Generation = apitype.LinkConnected, cn.mode, true, now, cn.gen
		l.NextRetry = time.Time{}
	})
	// end says why the connection ended. A re-registration request read
	// before the socket closed wins over the read or write error it caused.
	end := func(err error) outcome {
		select {
		case reason := <-cn.reregister:
			c.log.Warn("control plane no longer knows this cluster; registering again", logging.KeyReason, reason)
			c.clearRegistration()
			err = fmt.Errorf("%w (%s)", errReregister, reason)
		default:
		}
		cn.close(websocket.CloseNormalClosure, "connection ended")
		return outcome{err: err, up: time.Since(start)}
	}
	if err := c.sendHeartbeat(ctx, cn); err != nil {
		return end(err)
	}
	if cn.mode == ModeGateway {
		c.gwFailSince = time.Time{} // the gateway works
	}
	c.limiter.Reset()
	c.hmu.RLock()
	hooks := append([]protocol.ConnectHook(nil), c.hooks...)
	c.hmu.RUnlock()
	for _, h := range hooks {
		cn.goOwned(func() { c.runHook(cn, h) })
	}
	t := time.NewTicker(c.cfg.Agent.HeartbeatInterval.Std())
	defer t.Stop()
	// §8.5: healthy only while the last successful heartbeat is < 90 s old
	// (matters when agent.heartbeat_interval is set above that).
	fresh := time.NewTicker(15 * time.Second)
	defer fresh.Stop()
	credsChanged := c.credentialsChanged()
	for {
		c.lp.Idle()
		select {
		case <-credsChanged:
			c.lp.Busy()
			c.credsWait = nil // fired: the next connection asks for a new one
			// The next attempt sees a new fingerprint and registers with cluster_id.
			c.log.Info("Kubernetes credentials changed; registering again")
			cn.close(websocket.CloseNormalClosure, "credentials changed")
			return outcome{next: true, up: time.Since(start)}
		case <-ctx.Done():
			c.lp.Busy()
			// §8.7: in-flight work finishes (bounded) while the connection
			// can still carry its answers; then close with 1000.
			c.drain()
			cn.close(websocket.CloseNormalClosure, "agent shutting down")
			return outcome{up: time.Since(start)}
		case <-cn.Done():
			c.lp.Busy()
			return end(cn.Err())
		case reason := <-cn.reregister:
			c.lp.Busy()
			cn.signalReregister(reason) // end reads it back
			return end(nil)
		case <-fresh.C:
			c.lp.Busy()
			c.mu.Lock()
			last := c.link.LastHeartbeat
			c.mu.Unlock()
			if time.Since(last) > heartbeatFreshness {
				c.notReady(fmt.Sprintf("connected, but the last heartbeat was %s ago", time.Since(last).Round(time.Second)))
			}
		case <-t.C:
			c.lp.Busy()
			if err := c.sendHeartbeat(ctx, cn); err != nil {
				return end(err)
			}
		}
	}
}

// drain runs the shutdown drainers (OnShutdown) once, together, within
// the drain timeout.
func (c *Client) drain() {
	c.hmu.RLock()
	fns := append([]func(context.Context){}, c.drainers...)
	c.hmu.RUnlock()
	if len(fns) == 0 || c.drained {
		return
	}
	c.drained = true
	ctx, cancel := context.WithTimeout(context.Background(), c.drainTimeout)
	defer cancel()
	var wg sync.WaitGroup
	for _, fn := range fns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fn(ctx)
		}()
	}
	wg.Wait()
}

// credentialsChanged is the channel that closes at the next credentials
// change. One waiter serves every connection until it fires; asking for a
// new one per connection would leave one waiter behind per reconnect.
func (c *Client) credentialsChanged() <-chan struct{} {
	if c.credsWait == nil {
		if w, ok := c.cluster.(CredentialsWatcher); ok {
			c.credsWait = w.CredentialsChanged()
		}
	}
	return c.credsWait
}

func (c *Client) runHook(cn *conn, h protocol.ConnectHook) {
	defer func() {
		if r := recover(); r != nil {
			c.metrics.panics.Inc()
			c.log.Error("connect hook panicked", logging.KeyPanic, fmt.Sprint(r), logging.KeyGen, cn.gen)
		}
	}()
	h(cn.ctx, cn)
}

// clearGateway forgets gateway_ws_url (gateway 401/403, §8.6).
func (c *Client) clearGateway() {
	if err := c.st.Update(func(s *state.State) error { s.GatewayWSURL = ""; return nil }); err != nil {
		c.log.Error("could not persist state", logging.KeyErr, err)
	}
}

// clearRegistration forgets cluster_id and gateway_ws_url (§8.6), so the
// next attempt registers fresh.
func (c *Client) clearRegistration() {
	if err := c.st.Update(func(s *state.State) error {
		s.ClusterID, s.ClusterUUID, s.GatewayWSURL, s.CredentialsFingerprint = "", "", "", ""
		return nil
	}); err != nil {
		c.log.Error("could not persist state", logging.KeyErr, err)
	}
	c.updateLink(func(l *apitype.LinkStatus) { l.Registered = false })
}

// version asks the Kubernetes API for its GitVersion; registration waits
// for it and /ready says so.
func (c *Client) version(ctx context.Context) (string, error) {
	vctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	v, err := c.cluster.Version(vctx)
	if err != nil || v == "" {
		if err == nil {
			err = errors.New("empty version")
		}
		if st := c.st.Get(); st.ClusterID != "" && st.K8sVersion != "" && ctx.Err() == nil {
			// A resume registration (the cluster is known) with the API
			// server down: send the version last seen, which is real, not
			// a guess (§13.24); the control plane must not lose sight of
			// the cluster during a Kubernetes outage.
			c.log.Warn("the Kubernetes API does not answer; registering with the version last seen", "k8s_version", st.K8sVersion, logging.KeyErr, err)
			c.learnVersion(st.K8sVersion)
			return st.K8sVersion, nil
		}
		err = fmt.Errorf("waiting for the Kubernetes API version before registering: %w", err)
		c.notReady(err.Error())
		return "", err
	}
	c.learnVersion(v)
	return v, nil
}

// learnVersion keeps the API server's version for heartbeats and persists
// it when it changed.
func (c *Client) learnVersion(v string) {
	c.mu.Lock()
	c.k8sVersion = v
	c.mu.Unlock()
	if c.st.Get().K8sVersion == v {
		return
	}
	if err := c.st.Update(func(s *state.State) error { s.K8sVersion = v; return nil }); err != nil {
		c.log.Error("could not persist state", logging.KeyErr, err)
	}
}

// bestEffortVersion learns the Kubernetes version for heartbeats on a
// resume, which does not need it; a slow API does not delay the resume.
func (c *Client) bestEffortVersion(ctx context.Context) {
	c.mu.Lock()
	known := c.k8sVersion != ""
	c.mu.Unlock()
	if known {
		return
	}
	vctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if v, err := c.cluster.Version(vctx); err == nil && v != "" {
		c.learnVersion(v)
	} else if sv := c.st.Get().K8sVersion; sv != "" {
		c.mu.Lock()
		c.k8sVersion = sv // the last seen, until the API server answers
		c.mu.Unlock()
	}
}

func (c *Client) credentials(ctx context.Context) (string, string, error) {
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	token, ca, err := c.cluster.Credentials(cctx)
	if err != nil {
		err = fmt.Errorf("waiting for Kubernetes credentials to register with: %w", err)
		c.notReady(err.Error())
		return "", "", err
	}
	return token, ca, nil
}

// redactURL drops user info from a URL before it is logged or shown.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "invalid URL"
	}
	u.User = nil
	return u.String()
}
