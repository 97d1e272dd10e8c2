// Package health tracks named conditions reported by the agent's subsystems
// and the liveness of its main loops. The daemon turns a snapshot into
// /ready, STATUS= and `pipeopsctl status`; the watchdog pings systemd only
// while no watched loop is stuck in one step. Standard library only.
package health

import (
	"slices"
	"strings"
	"sync"
	"time"
)

// Well-known condition names. A condition registered as Required keeps the
// agent not-ready until it is OK.
const (
	ControlPlane = "controlplane"
	Kubernetes   = "kubernetes"
)

// Condition is one named fact about the agent's health.
type Condition struct {
	Name     string    `json:"name"`
	OK       bool      `json:"ok"`
	Reason   string    `json:"reason,omitempty"`
	Required bool      `json:"required"`
	Since    time.Time `json:"since"`
}

// Tracker is safe for concurrent use. The zero value is not ready for use; call New.
type Tracker struct {
	now func() time.Time

	mu      sync.Mutex
	conds   map[string]*Condition
	loops   map[uint64]*loopState
	nextID  uint64
	stall   func(loop string)
	waiters []chan struct{}
}

type loopState struct {
	name      string
	busySince time.Time // zero while idle
}

// New returns an empty tracker. now may be nil (time.Now).
func New(now func() time.Time) *Tracker {
	if now == nil {
		now = time.Now
	}
	return &Tracker{now: now, conds: map[string]*Condition{}, loops: map[uint64]*loopState{}}
}

// Require registers a condition that gates readiness, initially not OK.
func (t *Tracker) Require(name, reason string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.conds[name]; !ok {
		t.conds[name] = &Condition{Name: name, Reason: reason, Required: true, Since: t.now()}
		t.notifyLocked()
	}
}

// Set records the state of a condition. Unchanged values do not wake watchers.
func (t *Tracker) Set(name string, ok bool, reason string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c, exists := t.conds[name]
	if !exists {
		c = &Condition{Name: name}
		t.conds[name] = c
	}
	if exists && c.OK == ok && c.Reason == reason {
		return
	}
	if !exists || c.OK != ok {
		c.Since = t.now()
	}
	c.OK, c.Reason = ok, reason
	t.notifyLocked()
}

// Snapshot returns all conditions sorted by name.
func (t *Tracker) Snapshot() []Condition {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]Condition, 0, len(t.conds))
	for _, c := range t.conds {
		out = append(out, *c)
	}
	slices.SortFunc(out, func(a, b Condition) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Get returns one condition and whether it exists.
func (t *Tracker) Get(name string) (Condition, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c, ok := t.conds[name]
	if !ok {
		return Condition{}, false
	}
	return *c, true
}

// Ready reports whether every required condition is OK, and the reasons
// ("name: reason") of those that are not.
func (t *Tracker) Ready() (bool, []string) {
	var reasons []string
	for _, c := range t.Snapshot() {
		if c.Required && !c.OK {
			reasons = append(reasons, c.Name+": "+c.Reason)
		}
	}
	return len(reasons) == 0, reasons
}

// Changed returns a channel closed at the next change of any condition.
func (t *Tracker) Changed() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	ch := make(chan struct{})
	t.waiters = append(t.waiters, ch)
	return ch
}

func (t *Tracker) notifyLocked() {
	for _, ch := range t.waiters {
		close(ch)
	}
	t.waiters = nil
}

// Loop is one watched long-running loop: the daemon's supervisor, the
// control-plane link and its reader, writer and dispatcher, the route
// syncer, the tunnel's accept loop, the monitoring loop. Between Busy and
// Idle the loop does work that must finish within the liveness window
// (half of WatchdogSec); while idle it waits for input, a timer, or the
// network under its own timeout, which is not a hang. A nil *Loop does
// nothing, so a loop can be watched optionally.
type Loop struct {
	t  *Tracker
	id uint64
}

// Loop starts watching a loop, idle. Call Done when the loop ends.
func (t *Tracker) Loop(name string) *Loop {
	if t == nil {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.nextID++
	t.loops[t.nextID] = &loopState{name: name}
	return &Loop{t: t, id: t.nextID}
}

// Busy marks the start of one step of work.
func (l *Loop) Busy() {
	if l == nil {
		return
	}
	l.t.mu.Lock()
	st := l.t.loops[l.id]
	if st != nil && st.busySince.IsZero() {
		st.busySince = l.t.now()
	}
	stall := l.t.stall
	l.t.mu.Unlock()
	if stall != nil && st != nil {
		stall(st.name) // test builds only: may block, as a hung loop would
	}
}

// Idle marks the end of a step: the loop waits for its next input.
func (l *Loop) Idle() {
	if l == nil {
		return
	}
	l.t.mu.Lock()
	if st := l.t.loops[l.id]; st != nil {
		st.busySince = time.Time{}
	}
	l.t.mu.Unlock()
}

// Done stops watching a loop that ended on purpose.
func (l *Loop) Done() {
	if l == nil {
		return
	}
	l.t.mu.Lock()
	delete(l.t.loops, l.id)
	l.t.mu.Unlock()
}

// SetStall installs a function every Busy calls with the loop's name. It
// is the test seam that wedges a loop on purpose; production builds never
// install one.
func (t *Tracker) SetStall(fn func(loop string)) {
	t.mu.Lock()
	t.stall = fn
	t.mu.Unlock()
}

// Stale returns the loops that have been busy with one step for longer
// than maxAge, sorted and without duplicates: the watchdog withholds its
// pings while any is.
func (t *Tracker) Stale(maxAge time.Duration) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	var stale []string
	for _, st := range t.loops {
		if !st.busySince.IsZero() && now.Sub(st.busySince) > maxAge {
			stale = append(stale, st.name)
		}
	}
	slices.Sort(stale)
	return slices.Compact(stale)
}

// Loops lists the names of the watched loops, sorted, without duplicates.
func (t *Tracker) Loops() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []string
	for _, st := range t.loops {
		out = append(out, st.name)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// Summary is the one-line state for systemd's STATUS=: the first failing
// required condition, or "ready".
func (t *Tracker) Summary() string {
	ok, reasons := t.Ready()
	if ok {
		return "ready"
	}
	return "not ready: " + reasons[0]
}
