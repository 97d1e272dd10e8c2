package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
	"k8s.io/client-go/kubernetes"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/config"
	"github.com/pipeops/pipeops-vm-agent/internal/controlplane"
	"github.com/pipeops/pipeops-vm-agent/internal/ha"
	"github.com/pipeops/pipeops-vm-agent/internal/health"
	"github.com/pipeops/pipeops-vm-agent/internal/hostinfo"
	"github.com/pipeops/pipeops-vm-agent/internal/kube"
	"github.com/pipeops/pipeops-vm-agent/internal/localapi"
	"github.com/pipeops/pipeops-vm-agent/internal/logging"
	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
	"github.com/pipeops/pipeops-vm-agent/internal/state"
)

// leaderOnly names the subsystems only the HA leader runs: the
// control-plane link, route sync and the monitoring loop. Everything else
// (Kubernetes, the local API, /health, the dashboard) runs on every agent.
var leaderOnly = map[string]bool{"controlplane": true, "routes": true, "monitoring": true}

// haAgent is high availability across server nodes (docs/ha.md); nil when
// ha.enabled is false, and then nothing here runs.
type haAgent struct {
	cfg     *config.Config
	log     *slog.Logger
	st      *state.Store
	hl      *health.Tracker
	kube    *kube.Manager
	link    *controlplane.Client // set by attach
	elector *ha.Elector
	pubMu   sync.Mutex
	pub     ha.Identity // last identity written to or read from the Secret
	agentID string      // the shared agent id once adopted (under pubMu)
}

// newHA builds the elector when ha.enabled (nil otherwise). It starts nothing.
func newHA(cfg *config.Config, log *slog.Logger, reg prometheus.Registerer, st *state.Store, hl *health.Tracker,
	kc *kube.Manager, agentID string) (*haAgent, error) {
	if !cfg.HA.Enabled {
		return nil, nil
	}
	h := &haAgent{cfg: cfg, log: log, st: st, hl: hl, kube: kc, agentID: agentID}
	lease, renew, retry := cfg.HA.Lease()
	id := cfg.HA.Identity
	if id == "" {
		id = hostinfo.Hostname()
	}
	e, err := ha.New(ha.Options{
		Clientset: func(ctx context.Context) (kubernetes.Interface, error) { return kc.WaitClientset(ctx) },
		Namespace: cfg.Kubernetes.Namespace, Identity: id,
		LeaseDuration: lease, RenewDeadline: renew, RetryPeriod: retry,
		Log: log.With(logging.KeyComponent, "ha"), Metrics: reg,
		Tick:     h.refreshCopy,
		OnLeader: func(string, time.Time) { h.standbyHealth() },
	})
	if err != nil {
		return nil, fmt.Errorf("high availability: %w", err)
	}
	h.elector = e
	return h, nil
}

// active is the link's fence (controlplane.Options.Active); nil without HA.
func (h *haAgent) active() func() bool {
	if h == nil {
		return nil
	}
	return h.elector.Active
}

// mayDial is the link's dial fence (controlplane.Options.MayDial).
func (h *haAgent) mayDial() func() bool {
	if h == nil {
		return nil
	}
	return h.elector.MayDial
}

// kubeUnreachable wraps the proxy's view of the API server: a leader
// holding its link through an outage answers every call with the outage,
// even once its own API server answers again, until its term ends.
func (h *haAgent) kubeUnreachable(probe func() error) func() error {
	if h == nil {
		return probe
	}
	return func() error {
		if !h.elector.MayAct() {
			return errors.New("API server unreachable: this agent holds the control-plane link through the outage and sends no call until it answers again (high availability)")
		}
		return probe()
	}
}

// attach connects the link: it sends the shared agent id once adopted,
// and every connection publishes the identity (the first registration, a
// gateway the controller moved, a rotated token) for the other agents.
func (h *haAgent) attach(link *controlplane.Client) {
	if h == nil {
		return
	}
	h.link = link
	link.OnConnect(func(ctx context.Context, _ protocol.Conn) { h.publish(ctx) })
	h.standbyHealth()
}

// api is what the local API serves at /v1/ha (nil: high availability is off).
func (h *haAgent) api() localapi.HA {
	if h == nil {
		return nil
	}
	return h
}

// Status answers GET /v1/ha.
func (h *haAgent) Status(ctx context.Context) apitype.HAStatus { return h.elector.Status(ctx) }

// StepDown answers POST /v1/ha/step-down.
func (h *haAgent) StepDown() (apitype.HAStatus, error) {
	if err := h.elector.StepDown(); errors.Is(err, ha.ErrNotLeader) {
		st := h.elector.Snapshot()
		return st, &apitype.Error{Code: apitype.CodeBadRequest, Message: fmt.Sprintf("%s is not the leader (%s)", st.Identity, st.Role),
			Hint: "run \"pipeopsctl ha step-down\" on the leader" + onLeader(st)}
	}
	return h.elector.Snapshot(), nil
}

// fillStatus adds the HA section to the status snapshot: on a standby the
// link shows "standby", and the agent id is the shared one once adopted.
func (h *haAgent) fillStatus(st *apitype.StatusResponse) {
	if h == nil {
		return
	}
	s := h.elector.Snapshot()
	st.HA = &s
	st.AgentID = h.sharedID()
	if s.Role != apitype.HALeader {
		st.Link = apitype.LinkStatus{State: "standby"}
	}
}

func onLeader(st apitype.HAStatus) string {
	if st.Leader == "" {
		return ""
	}
	return " (" + st.Leader + ")"
}

// gate returns what Run starts: without HA, subs unchanged; with it, the
// leader-only subsystems are replaced by one "ha" subsystem that runs
// them while this agent leads, after adopting the cluster's identity.
func (h *haAgent) gate(subs []subsystem) []subsystem {
	if h == nil {
		return subs
	}
	var out, lead []subsystem
	for _, s := range subs {
		if leaderOnly[s.name] {
			lead = append(lead, s)
		} else {
			out = append(out, s)
		}
	}
	return append(out, subsystem{name: "ha", run: func(ctx context.Context) error {
		return h.elector.Run(ctx, func(ctx context.Context) error { return h.lead(ctx, lead) })
	}})
}

// lead is one term: adopt the shared identity, then run the leader-only
// subsystems until the term ends.
func (h *haAgent) lead(ctx context.Context, subs []subsystem) error {
	if err := h.adopt(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	// Holding through an API server outage, only the link stays: route
	// sync and monitoring stop at once.
	actCtx, stopActing := context.WithCancel(gctx)
	defer stopActing()
	g.Go(func() error {
		select {
		case <-h.elector.HoldStarted():
			stopActing()
		case <-gctx.Done():
		}
		return nil
	})
	for _, s := range subs {
		sctx := actCtx
		if s.name == "controlplane" {
			sctx = gctx
		}
		g.Go(func() error {
			if err := s.run(sctx); err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
			return nil
		})
	}
	return g.Wait()
}

// adopt reads the shared identity (the lease is ours, so the API server
// answers; retried until it does or the term ends) and makes it this
// agent's: the link resumes on the gateway with it, without registering.
// With none shared yet, a registered local identity (an agent that ran
// before ha.enabled) is published; else the link registers and publishes.
func (h *haAgent) adopt(ctx context.Context) error {
	cs, err := h.kube.WaitClientset(ctx)
	if err != nil {
		return err
	}
	for {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		id, ok, err := ha.LoadIdentity(rctx, cs, h.cfg.Kubernetes.Namespace)
		cancel()
		if err == nil {
			if ok {
				h.apply(id)
				// The same Kubernetes token as the agent that registered:
				// same fingerprint, so the link resumes (§8.3).
				h.kube.Adopt(kube.Saved{Token: id.ClusterToken, CAData: id.ClusterCAData, Source: id.TokenSource,
					Secret: id.TokenSecret, Issued: id.TokenIssuedAt, Expires: id.TokenExpiresAt})
				h.log.Info("adopted the cluster's identity", "agent_id", id.AgentID, logging.KeyClusterID, id.ClusterID, "written_by", id.UpdatedBy)
			} else if h.st.Get().ClusterID != "" {
				h.publish(ctx) // registered before ha.enabled: that identity becomes the cluster's
			}
			return nil
		}
		h.log.Warn("could not read the cluster's identity; retrying", logging.KeyErr, err)
		t := time.NewTimer(time.Second)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// apply makes id the local identity: state (the copy kept for when the API
// server is unreachable) and the agent id the link sends.
func (h *haAgent) apply(id ha.Identity) {
	h.pubMu.Lock()
	h.pub = id
	h.agentID = id.AgentID
	h.pubMu.Unlock()
	if h.link != nil {
		h.link.SetAgentID(id.AgentID)
	}
	if adopted(h.st.Get(), id) {
		return
	}
	err := h.st.Update(func(s *state.State) error {
		s.AgentID, s.ClusterID, s.ClusterUUID, s.GatewayWSURL = id.AgentID, id.ClusterID, id.ClusterUUID, id.GatewayWSURL
		s.CredentialsFingerprint = id.CredentialsFingerprint
		if len(id.Secrets) > 0 {
			if s.Secrets == nil {
				s.Secrets = map[string]string{}
			}
			for k, v := range id.Secrets {
				s.Secrets[k] = v
			}
		}
		return nil
	})
	if err != nil {
		h.log.Error("could not keep a copy of the cluster's identity in the state file", logging.KeyErr, err)
	}
}

// sharedID is the agent id this agent sends: the cluster's once adopted.
func (h *haAgent) sharedID() string {
	h.pubMu.Lock()
	defer h.pubMu.Unlock()
	return h.agentID
}

// adopted reports whether the state already holds what apply writes.
func adopted(s state.State, id ha.Identity) bool {
	if s.AgentID != id.AgentID || s.ClusterID != id.ClusterID || s.ClusterUUID != id.ClusterUUID ||
		s.GatewayWSURL != id.GatewayWSURL || s.CredentialsFingerprint != id.CredentialsFingerprint {
		return false
	}
	for k, v := range id.Secrets {
		if s.Secrets[k] != v {
			return false
		}
	}
	return true
}

// publish writes this agent's identity to the Secret when it is
// registered and differs from what is there. Only while it is the leader.
func (h *haAgent) publish(ctx context.Context) {
	h.pubMu.Lock()
	defer h.pubMu.Unlock()
	id := identityOf(h.st.Get())
	id.AgentID = h.agentID // configured (agent.id), derived or adopted; the state may not hold it
	if !id.Registered() || !h.elector.Active() {
		return
	}
	if id.Same(h.pub) {
		return
	}
	cs := h.kube.Clientset()
	if cs == nil {
		return
	}
	id.UpdatedBy, id.UpdatedAt = h.elector.Identity(), time.Now().UTC()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := ha.SaveIdentity(ctx, cs, h.cfg.Kubernetes.Namespace, id); err != nil {
		h.log.Warn("could not share the cluster's identity with the other agents; retrying at the next connection", logging.KeyErr, err)
		return
	}
	h.pub = id
	h.log.Info("shared the cluster's identity with the other agents", "agent_id", id.AgentID, logging.KeyClusterID, id.ClusterID)
}

// refreshCopy keeps a standby's copy of the identity current (every lease
// duration), so it has it when it takes over.
func (h *haAgent) refreshCopy(ctx context.Context, cs kubernetes.Interface) {
	if h.elector.Active() {
		h.publish(ctx) // e.g. the token was rotated
		return
	}
	id, ok, err := ha.LoadIdentity(ctx, cs, h.cfg.Kubernetes.Namespace)
	if err == nil && ok {
		h.apply(id)
	}
}

// standbyHealth tells /ready, STATUS= and `pipeopsctl status` that this
// agent is a standby and who is active: a standby is healthy.
func (h *haAgent) standbyHealth() {
	st := h.elector.Snapshot()
	if st.Role == apitype.HALeader || st.Role == apitype.HAStopping || st.Leader == st.Identity {
		return // the link reports for itself
	}
	reason := "standby; no agent is active yet"
	if st.Leader != "" && st.Leader != st.Identity {
		reason = "standby; active on " + st.Leader
		if !st.LeaderSince.IsZero() {
			reason += " since " + st.LeaderSince.UTC().Format(time.RFC3339)
		}
	}
	h.hl.Set(health.ControlPlane, true, reason)
}

// identityOf is the identity a state file holds.
func identityOf(s state.State) ha.Identity {
	return ha.Identity{AgentID: s.AgentID, ClusterID: s.ClusterID, ClusterUUID: s.ClusterUUID, GatewayWSURL: s.GatewayWSURL,
		ClusterToken: s.ClusterToken, ClusterCAData: s.ClusterCAData, CredentialsFingerprint: s.CredentialsFingerprint,
		TokenSource: s.TokenSource, TokenSecret: s.TokenSecret, TokenIssuedAt: s.TokenIssuedAt, TokenExpiresAt: s.TokenExpiresAt,
		Secrets: s.Secrets}
}
