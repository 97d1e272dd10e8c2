// Package health tracks named conditions reported by the agent's subsystems
// and the liveness of its main loops. The daemon turns a snapshot into
// /ready, STATUS= and `pipeopsctl status`; the watchdog pings systemd only
// while every registered loop has beaten recently. Standard library only.
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
	beats   map[string]time.Time
	waiters []chan struct{}
}

// New returns an empty tracker. now may be nil (time.Now).
func New(now func() time.Time) *Tracker {
	if now == nil {
		now = time.Now
	}
	return &Tracker{now: now, conds: map[string]*Condition{}, beats: map[string]time.Time{}}
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

// Beat stamps a main loop as alive. A loop that has beaten once is then
// expected to keep beating; see Stale.
func (t *Tracker) Beat(loop string) {
	t.mu.Lock()
	t.beats[loop] = t.now()
	t.mu.Unlock()
}

// Forget stops expecting beats from a loop that ended on purpose.
func (t *Tracker) Forget(loop string) {
	t.mu.Lock()
	delete(t.beats, loop)
	t.mu.Unlock()
}

// Stale returns the loops whose last beat is older than maxAge, sorted.
func (t *Tracker) Stale(maxAge time.Duration) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	var stale []string
	for name, at := range t.beats {
		if now.Sub(at) > maxAge {
			stale = append(stale, name)
		}
	}
	slices.Sort(stale)
	return stale
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
