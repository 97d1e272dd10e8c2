package logging

import (
	"sync"
	"time"
)

// Limiter lets a retry loop log each distinct failure once, then at most one
// summary per interval with the number of repeats swallowed in between
// (conventions §4). The zero value is not usable; call NewLimiter.
type Limiter struct {
	every time.Duration
	now   func() time.Time

	mu   sync.Mutex
	seen map[string]*limEntry
}

type limEntry struct {
	last       time.Time
	suppressed int
}

// NewLimiter returns a limiter that repeats a message at most once per every.
func NewLimiter(every time.Duration, now func() time.Time) *Limiter {
	if now == nil {
		now = time.Now
	}
	return &Limiter{every: every, now: now, seen: map[string]*limEntry{}}
}

// Allow reports whether the message keyed by key should be logged now, and
// how many repeats were suppressed since it was last logged.
func (l *Limiter) Allow(key string) (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	e, found := l.seen[key]
	if !found {
		if len(l.seen) > 256 { // bound memory: distinct keys come from errors
			clear(l.seen)
		}
		l.seen[key] = &limEntry{last: now}
		return true, 0
	}
	if now.Sub(e.last) >= l.every {
		n := e.suppressed
		e.last, e.suppressed = now, 0
		return true, n
	}
	e.suppressed++
	return false, 0
}

// Reset forgets every key, so the next failure after a recovery is logged.
func (l *Limiter) Reset() {
	l.mu.Lock()
	clear(l.seen)
	l.mu.Unlock()
}
