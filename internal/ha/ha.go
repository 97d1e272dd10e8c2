// Package ha runs the agent's side of high availability across server
// nodes: the agents installed on every server VM elect one leader through a
// coordination.k8s.io Lease in the agent's namespace (client-go's
// tools/leaderelection), each keeps a candidate Lease of its own so `pipeopsctl
// ha status` can list them, and the cluster's identity (agent id, cluster id,
// gateway, cluster token, monitoring credentials) lives in one Secret that the
// first agent to register writes and the others adopt.
//
// An Elector leads one term at most: when the term ends (the lease was lost,
// or a step-down was asked for) Run returns ErrTermEnded and the daemon
// starts again as a standby, as kube-controller-manager does, so nothing of
// the old term survives in memory. Only package daemon imports it.
package ha

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/logging"
)

// Names of the objects in the agent's namespace.
const (
	LeaseName       = "pipeops-agent-leader"
	CandidatePrefix = "pipeops-agent-candidate-"
	CandidateLabel  = "pipeops.io/ha-candidate"
	SecretName      = "pipeops-agent-identity"
)

// Default lease settings: a killed leader is replaced about LeaseDuration
// after its last renewal; a leader that cannot renew for RenewDeadline
// steps down, LeaseDuration-RenewDeadline before anyone may take its lease.
const (
	DefaultLeaseDuration = 10 * time.Second
	DefaultRenewDeadline = 7 * time.Second
	DefaultRetryPeriod   = time.Second
)

// ErrTermEnded is returned by Run when this agent led and stopped leading
// (lost lease or step-down): the daemon restarts in place as a standby.
var ErrTermEnded = errors.New("leadership ended")

// ErrNotLeader is returned by StepDown on a standby.
var ErrNotLeader = errors.New("this agent is not the leader")

// Options are an Elector's dependencies.
type Options struct {
	// Clientset waits for the client to elect with (the agent's
	// ServiceAccount, whose Role allows the Leases and the identity Secret).
	Clientset func(ctx context.Context) (kubernetes.Interface, error)
	Namespace string
	// Identity names this candidate: the node (host name) by default.
	Identity string
	// Lease settings; zero takes the defaults above.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	Log                                       *slog.Logger
	// Metrics registers pipeops_agent_ha_*; nil skips.
	Metrics prometheus.Registerer
	// Tick, when set, runs with the candidate Lease's renewal, every lease
	// duration, on leader and standbys alike (the daemon refreshes its copy
	// of the shared identity).
	Tick func(ctx context.Context, cs kubernetes.Interface)
	// OnLeader, when set, is called (outside any lock) when the observed
	// leader changes; "" means none.
	OnLeader func(leader string, since time.Time)
}

// Elector campaigns for the lease and runs the leader's work while it holds it.
type Elector struct {
	o   Options
	log *slog.Logger
	met *metrics

	stepDown  chan struct{}
	stepOnce  sync.Once
	holdStart chan struct{} // closed when this term starts holding

	mu        sync.Mutex
	lastRenew time.Time // when this agent's last successful renewal left (monotonic)
	// Since lastRenew: when the lease lock last failed without reaching
	// the API server, and when the API server last answered at all. A
	// leader cut off from the API server holds its link (docs/ha.md).
	lastUnreached time.Time
	lastAnswer    time.Time
	role          string // apitype.HAStarting, HAStandby, HALeader or HAStopping
	leader        string
	since         time.Time     // when the current leader acquired the lease (lease acquireTime)
	termFrom      time.Time     // when this agent started leading (monotonic)
	ledFor        time.Duration // ended terms
	started       time.Time
	cs            kubernetes.Interface
	cands         []apitype.HACandidate
}

// New checks the lease settings and builds an Elector; it starts nothing.
func New(o Options) (*Elector, error) {
	if o.LeaseDuration == 0 {
		o.LeaseDuration = DefaultLeaseDuration
	}
	if o.RenewDeadline == 0 {
		o.RenewDeadline = DefaultRenewDeadline
	}
	if o.RetryPeriod == 0 {
		o.RetryPeriod = DefaultRetryPeriod
	}
	if o.Identity == "" || o.Namespace == "" || o.Clientset == nil {
		return nil, errors.New("ha: Identity, Namespace and Clientset are required")
	}
	if err := CheckLease(o.LeaseDuration, o.RenewDeadline, o.RetryPeriod); err != nil {
		return nil, err
	}
	if o.Log == nil {
		o.Log = logging.Discard()
	}
	e := &Elector{o: o, log: o.Log, stepDown: make(chan struct{}), holdStart: make(chan struct{}), role: apitype.HAStarting, started: time.Now()}
	e.met = newMetrics(o.Metrics, e)
	return e, nil
}

// CheckLease reports lease settings leaderelection refuses: the renew
// deadline must be shorter than the lease (a leader that cannot renew steps
// down before its lease can be taken) and longer than 1.2 retry periods;
// the lease is counted in whole seconds.
func CheckLease(lease, renew, retry time.Duration) error {
	switch {
	case lease < time.Second || lease%time.Second != 0:
		return fmt.Errorf("lease duration %s: must be whole seconds, at least 1s", lease)
	case renew >= lease:
		return fmt.Errorf("renew deadline %s: must be shorter than the lease duration %s", renew, lease)
	case retry <= 0 || float64(renew) <= leaderelection.JitterFactor*float64(retry):
		return fmt.Errorf("retry period %s: must be positive and under renew deadline / %.1f (%s)", retry, leaderelection.JitterFactor, renew)
	}
	return nil
}

// Identity is this candidate's name.
func (e *Elector) Identity() string { return e.o.Identity }

// Settings are the lease settings in use.
func (e *Elector) Settings() (lease, renew, retry time.Duration) {
	return e.o.LeaseDuration, e.o.RenewDeadline, e.o.RetryPeriod
}

// Active reports whether this agent may send on its control-plane link
// now: it leads, and either its last renewal started less than the renew
// deadline ago (no other candidate can have taken the lease: they wait a
// whole lease duration from the renewal they observed), or it is holding:
// since that renewal its lease lock has failed to reach the API server and
// the API server has not answered once. A leader frozen by SIGSTOP is
// inactive from the first instant its lease might be in doubt (no attempt
// failed while it was frozen), before the elector itself notices; after it
// wakes, the first answer from the API server ends any hold.
func (e *Elector) Active() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.fresh() || e.holdingLocked()
}

// MayDial reports whether this agent may open a new control-plane
// connection: only while it leads with a fresh renewal. A holding leader
// keeps the connection it has and never dials: the control plane keeps one
// session per cluster, and a redial could take it from a new leader.
func (e *Elector) MayDial() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.fresh()
}

// MayAct reports whether this agent may act on the cluster (proxied calls
// to the API server): only with a fresh renewal, never while holding.
func (e *Elector) MayAct() bool { return e.MayDial() }

// HoldStarted is closed when this agent starts holding its link through an
// API server outage: the daemon then stops route sync and monitoring.
func (e *Elector) HoldStarted() <-chan struct{} { return e.holdStart }

// Holding reports whether this agent holds its link through an API server
// outage.
func (e *Elector) Holding() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.holdingLocked()
}

func (e *Elector) fresh() bool {
	leading := e.role == apitype.HALeader || e.role == apitype.HAStopping || e.role == apitype.HAHolding
	return leading && !e.lastRenew.IsZero() && time.Since(e.lastRenew) < e.o.RenewDeadline
}

func (e *Elector) holdingLocked() bool {
	leading := e.role == apitype.HALeader || e.role == apitype.HAHolding
	return leading && !e.lastRenew.IsZero() && e.lastUnreached.After(e.lastRenew) && !e.lastAnswer.After(e.lastRenew)
}

// noteResult records whether a lease lock call reached the API server:
// any answer but a 5xx or 429 counts; a transport error or timeout does not.
func (e *Elector) noteResult(err error) {
	now := time.Now()
	e.mu.Lock()
	defer e.mu.Unlock()
	if reached(err) {
		e.lastAnswer = now
	} else {
		e.lastUnreached = now
	}
}

func reached(err error) bool {
	if err == nil {
		return true
	}
	var st apierrors.APIStatus
	if errors.As(err, &st) {
		code := st.Status().Code
		return code != 0 && code < 500 && code != 429
	}
	return false
}

// StepDown ends this agent's term: the leader's work stops (the link drains
// and closes with 1000), the lease is released at once, and Run returns
// ErrTermEnded. ErrNotLeader on a standby.
func (e *Elector) StepDown() error {
	e.mu.Lock()
	role := e.role
	e.mu.Unlock()
	if role != apitype.HALeader && role != apitype.HAHolding {
		return ErrNotLeader
	}
	e.stepOnce.Do(func() { close(e.stepDown) })
	return nil
}

// Run campaigns until ctx ends. When this agent acquires the lease it calls
// lead with a context that ends with the term, and waits for lead to
// return before the lease is released, so two leaders never act at once.
// It returns nil when ctx ended (the lease released on the way out, for a
// graceful handover), ErrTermEnded when the term ended otherwise, or lead's
// error.
func (e *Elector) Run(ctx context.Context, lead func(ctx context.Context) error) error {
	cs, err := e.o.Clientset(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("high availability: %w", err)
	}
	e.mu.Lock()
	e.cs = cs
	e.role = apitype.HAStandby
	e.mu.Unlock()
	e.log.Info("campaigning for leadership", "candidate", e.o.Identity, "lease", e.o.Namespace+"/"+LeaseName,
		"lease_duration", e.o.LeaseDuration.String(), "renew_deadline", e.o.RenewDeadline.String(), "retry_period", e.o.RetryPeriod.String())

	candCtx, stopCand := context.WithCancel(ctx)
	candDone := make(chan struct{})
	go func() { defer close(candDone); e.keepCandidate(candCtx, cs) }()
	defer func() { stopCand(); <-candDone }()

	inner, err := resourcelock.New(resourcelock.LeasesResourceLock, e.o.Namespace, LeaseName, cs.CoreV1(), cs.CoordinationV1(),
		resourcelock.ResourceLockConfig{Identity: e.o.Identity})
	if err != nil {
		return fmt.Errorf("high availability: %w", err)
	}
	lock := &observedLock{Interface: inner, e: e}

	electCtx, stopElect := context.WithCancel(context.WithoutCancel(ctx))
	defer stopElect()
	termCtx, endTerm := context.WithCancel(context.WithoutCancel(ctx))
	defer endTerm()
	var (
		leadErr  error
		leadDone = make(chan struct{})
		led      atomic.Bool
		termMu   sync.Mutex
		closing  bool // set before the term is ended: a late OnStartedLeading does nothing
	)
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock: lock, Name: LeaseName, ReleaseOnCancel: true,
		LeaseDuration: e.o.LeaseDuration, RenewDeadline: e.o.RenewDeadline, RetryPeriod: e.o.RetryPeriod,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(context.Context) {
				termMu.Lock()
				if closing {
					termMu.Unlock()
					return
				}
				led.Store(true)
				termMu.Unlock()
				e.becameLeader()
				// The term ends when we end it (endTerm): after the
				// library lost the lease (and any hold is over), or
				// before the lease is released.
				defer close(leadDone)
				leadErr = lead(termCtx)
				endTerm()
			},
			OnStoppedLeading: func() {},
			OnNewLeader:      func(id string) { e.log.Info("leader observed", "leader", id) },
		},
	})
	if err != nil {
		return fmt.Errorf("high availability: %w", err)
	}
	elected := make(chan struct{})
	go func() { defer close(elected); le.Run(electCtx) }()

	graceful := false
	select {
	case <-ctx.Done(): // shutdown: stop leading first, then release
		graceful = true
	case <-e.stepDown:
		graceful = true
		e.log.Info("stepping down on request: stopping the leader's work, then releasing the lease")
	case <-termCtx.Done(): // lead returned
	case <-elected: // the library returned by itself: the lease was lost
		if led.Load() && e.Holding() {
			e.hold(ctx, lock, termCtx)
		}
	}
	e.setRole(apitype.HAStopping)
	termMu.Lock()
	closing = true
	termMu.Unlock()
	endTerm()
	if led.Load() {
		<-leadDone
	}
	stopElect() // ReleaseOnCancel: an empty holder, so a standby takes over at its next try
	<-elected
	wasLeader := led.Load()
	e.endedTerm(wasLeader)
	if wasLeader && graceful && ctx.Err() == nil {
		// A step-down: give the standbys their turn before this agent
		// campaigns again (restarted in place, it would otherwise win the
		// free lease at once).
		e.awaitOtherLeader(ctx, lock)
	}
	switch {
	case leadErr != nil && !errors.Is(leadErr, context.Canceled):
		return leadErr
	case ctx.Err() != nil && graceful:
		return nil
	case wasLeader:
		return ErrTermEnded
	}
	return nil
}

func (e *Elector) setRole(r string) {
	e.mu.Lock()
	e.role = r
	e.mu.Unlock()
}

func (e *Elector) becameLeader() {
	e.mu.Lock()
	e.role = apitype.HALeader
	e.termFrom = time.Now()
	e.mu.Unlock()
	e.met.transitions.Inc()
	e.log.Info("this agent is now the leader: starting the control-plane link, route sync and monitoring", "candidate", e.o.Identity)
}

func (e *Elector) endedTerm(wasLeader bool) {
	e.mu.Lock()
	if wasLeader {
		e.ledFor += time.Since(e.termFrom)
		e.termFrom = time.Time{}
	}
	e.role = apitype.HAStandby
	e.mu.Unlock()
	if wasLeader {
		e.met.transitions.Inc()
		e.log.Info("this agent stopped leading", "candidate", e.o.Identity)
	}
}

// observe records the lease as last read or written.
func (e *Elector) observe(holder string, acquired time.Time) {
	e.mu.Lock()
	changed := e.leader != holder || !e.since.Equal(acquired)
	e.leader, e.since = holder, acquired
	e.mu.Unlock()
	if changed && e.o.OnLeader != nil {
		e.o.OnLeader(holder, acquired)
	}
}

// Snapshot is Status without asking the API server: what the election
// and the last candidate round saw.
func (e *Elector) Snapshot() apitype.HAStatus {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.snapshotLocked("")
}

// observedLock wraps the Lease lock to timestamp this agent's own
// renewals (for Active) and to remember who holds the lease since when.
type observedLock struct {
	resourcelock.Interface
	e *Elector
}

func (l *observedLock) Get(ctx context.Context) (*resourcelock.LeaderElectionRecord, []byte, error) {
	rec, raw, err := l.Interface.Get(ctx)
	l.e.noteResult(err)
	if err == nil && rec != nil {
		holder, since := rec.HolderIdentity, rec.AcquireTime.Time
		if time.Since(rec.RenewTime.Time) > time.Duration(rec.LeaseDurationSeconds)*time.Second {
			holder, since = "", time.Time{} // a holder whose lease ran out leads no more
		}
		l.e.observe(holder, since)
	}
	return rec, raw, err
}

func (l *observedLock) Create(ctx context.Context, r resourcelock.LeaderElectionRecord) error {
	return l.write(ctx, r, l.Interface.Create)
}

func (l *observedLock) Update(ctx context.Context, r resourcelock.LeaderElectionRecord) error {
	return l.write(ctx, r, l.Interface.Update)
}

// write stamps a renewal with the time before the request left: the lease
// others observe can only be younger, so Active errs on the safe side.
func (l *observedLock) write(ctx context.Context, r resourcelock.LeaderElectionRecord,
	fn func(context.Context, resourcelock.LeaderElectionRecord) error) error {
	start := time.Now()
	err := fn(ctx, r)
	if err != nil {
		l.e.noteResult(err)
		return err
	}
	l.e.mu.Lock()
	l.e.lastAnswer = start // the renewal itself: not an answer after it
	if r.HolderIdentity == l.e.o.Identity {
		l.e.lastRenew = start
	} else {
		l.e.lastRenew = time.Time{} // released
	}
	l.e.mu.Unlock()
	if r.HolderIdentity == "" {
		r.AcquireTime = metav1.Time{}
	}
	l.e.observe(r.HolderIdentity, r.AcquireTime.Time)
	return nil
}

// awaitOtherLeader waits until another candidate holds the lease, for one
// lease duration at most (there may be no other candidate).
func (e *Elector) awaitOtherLeader(ctx context.Context, lock *observedLock) {
	deadline := time.NewTimer(e.o.LeaseDuration)
	defer deadline.Stop()
	tick := time.NewTicker(e.o.RetryPeriod / 2)
	defer tick.Stop()
	for {
		rctx, cancel := context.WithTimeout(ctx, e.o.RetryPeriod)
		rec, _, err := lock.Get(rctx)
		cancel()
		if err == nil && rec != nil && rec.HolderIdentity != "" && rec.HolderIdentity != e.o.Identity {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-deadline.C:
			return
		case <-tick.C:
		}
	}
}

// hold keeps a leader cut off from the API server in its term, with its
// link, until the API server answers again (then the term ends and the
// agent starts over as a standby: the lease may be another's by then), the
// link's work ends, or the agent stops. Meanwhile it may not act on the
// cluster nor dial (MayAct, MayDial).
func (e *Elector) hold(ctx context.Context, lock *observedLock, termCtx context.Context) {
	e.setRole(apitype.HAHolding)
	close(e.holdStart)
	e.log.Warn("the API server is unreachable and the lease could not be renewed: keeping the control-plane link so the control plane keeps sight of the cluster; no new connection and no call to the API server until it answers")
	tick := time.NewTicker(e.o.RetryPeriod)
	defer tick.Stop()
	for e.Holding() {
		select {
		case <-ctx.Done():
			return
		case <-e.stepDown:
			return
		case <-termCtx.Done():
			return
		case <-tick.C:
		}
		rctx, cancel := context.WithTimeout(ctx, e.o.RetryPeriod)
		_, _, _ = lock.Get(rctx) // an answer ends the hold
		cancel()
	}
	e.log.Info("the API server answers again: ending this term; starting over as a standby")
}
