package tunnel

import (
	"errors"
	"sync"
	"sync/atomic"

	yamux "github.com/libp2p/go-yamux/v5"
)

// errBudget is returned to yamux when a stream's receive window may not grow.
var errBudget = errors.New("tunnel memory budget exhausted")

// budget is the global memory budget across all streams of all sessions.
//
// A stream's receive window bounds what the gateway may send it before the
// target consumes it, so the sum of the windows bounds the memory buffered
// for slow targets. yamux asks before every window it grants: the initial
// 256 KiB every yamux stream must have (priority 255) is always granted and
// counted; growth beyond it (auto-tuned up to the configured stream window
// while the stream is fast) is granted only while the total stays within
// the limit. So N streams can hold at most N × 256 KiB + limit, and a few
// fast streams still reach the full window.
type budget struct {
	limit int64
	used  atomic.Int64
	peak  atomic.Int64
}

func newBudget(limit int64) *budget { return &budget{limit: limit} }

// reserve takes size bytes; must (initial windows) always succeeds.
func (b *budget) reserve(size int64, must bool) bool {
	for {
		cur := b.used.Load()
		next := cur + size
		if !must && b.limit > 0 && next > b.limit {
			return false
		}
		if b.used.CompareAndSwap(cur, next) {
			for {
				p := b.peak.Load()
				if next <= p || b.peak.CompareAndSwap(p, next) {
					break
				}
			}
			return true
		}
	}
}

func (b *budget) release(size int64) { b.used.Add(-size) }

// manager returns the per-stream memory manager yamux asks for.
func (b *budget) manager() (yamux.MemoryManager, error) { return &streamSpan{b: b}, nil }

// streamSpan is one stream's share of the budget.
type streamSpan struct {
	b        *budget
	mu       sync.Mutex
	reserved int64
	done     bool
}

func (s *streamSpan) ReserveMemory(size int, prio uint8) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done {
		return errBudget
	}
	if !s.b.reserve(int64(size), prio == 255) {
		return errBudget
	}
	s.reserved += int64(size)
	return nil
}

func (s *streamSpan) ReleaseMemory(size int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := min(int64(size), s.reserved)
	s.reserved -= n
	s.b.release(n)
}

func (s *streamSpan) Done() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.done {
		s.done = true
		s.b.release(s.reserved)
		s.reserved = 0
	}
}
