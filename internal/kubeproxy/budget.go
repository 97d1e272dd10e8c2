package kubeproxy

import (
	"context"
	"encoding/base64"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// errOverBudget: a buffered response would take the agent past
// proxy.memory_budget_bytes.
var errOverBudget = errors.New("over the buffered-response memory budget")

// errTooLarge: a buffered response is larger than proxy.max_buffered_bytes.
var errTooLarge = errors.New("larger than the buffered-response limit")

// memBudget is the global budget for buffered response bytes
// (proxy.memory_budget_bytes): every byte a buffered response holds (the
// HTTP/2 window the transport may fill, its body, its gzip copy and its
// encoded message) is reserved here before it is allocated. Only a call's
// first reservation may wait (admit); every later one fails at once when
// it does not fit, so no call ever waits while holding part of the budget.
type memBudget struct {
	limit int64
	used  atomic.Int64

	mu    sync.Mutex
	freed chan struct{} // closed and replaced on every release
}

func newMemBudget(limit int64) *memBudget {
	return &memBudget{limit: limit, freed: make(chan struct{})}
}

func (b *memBudget) reserve(n int64) bool { return b.reserveBelow(n, b.limit) }

// reserveBelow reserves n if the total stays at or below max.
func (b *memBudget) reserveBelow(n, max int64) bool {
	for {
		cur := b.used.Load()
		if cur+n > max {
			return false
		}
		if b.used.CompareAndSwap(cur, cur+n) {
			return true
		}
	}
}

// admit takes a new request's first reservation. It waits (until ctx
// ends) while the budget is more than half used: the other half is
// headroom for the requests already admitted, whose growth never waits, so
// a burst does not fill the budget with first reservations that then all
// fail to grow. Only a request that holds nothing yet may wait: one that
// waited while holding part of the budget could wait for itself.
func (b *memBudget) admit(ctx context.Context, n int64) bool {
	for {
		b.mu.Lock()
		freed := b.freed
		b.mu.Unlock()
		if b.reserveBelow(n, b.limit/2) || n > b.limit/2 && b.reserveBelow(n, b.limit) {
			return true
		}
		select {
		case <-freed:
		case <-ctx.Done():
			return false
		}
	}
}

func (b *memBudget) release(n int64) {
	if n == 0 {
		return
	}
	b.used.Add(-n)
	b.mu.Lock()
	close(b.freed)
	b.freed = make(chan struct{})
	b.mu.Unlock()
}

// blockSize is the unit of a spool. It is a multiple of 3, so every full
// block base64-encodes on its own, without padding.
const blockSize = 48 << 10

var blocks = sync.Pool{New: func() any { b := make([]byte, 0, blockSize); return &b }}

// spool holds bytes in pooled blocks whose memory is reserved from a
// budget before each block is taken. Every block but the last is full.
type spool struct {
	b        *memBudget
	blocks   []*[]byte
	n        int64 // bytes held
	reserved int64 // bytes reserved from b
	max      int64 // more than this fails with errTooLarge (0: no cap)
}

func newSpool(b *memBudget, max int64) *spool { return &spool{b: b, max: max} }

// budgetWait bounds how long a buffered request waits for its first
// reservation while other responses hold the budget.
const budgetWait = 30 * time.Second

// reserveFirst takes the spool's first reservation, waiting while other
// requests hold the budget (up to budgetWait, or until ctx ends).
func (s *spool) reserveFirst(ctx context.Context, n int64) bool {
	ctx, cancel := context.WithTimeout(ctx, budgetWait)
	defer cancel()
	if s.reserved != 0 || !s.b.admit(ctx, n) {
		return false
	}
	s.reserved = n
	return true
}

// reserve makes sure at least n bytes are reserved in total.
func (s *spool) reserve(n int64) error {
	if n <= s.reserved {
		return nil
	}
	if !s.b.reserve(n - s.reserved) {
		return errOverBudget
	}
	s.reserved = n
	return nil
}

// room returns a block with free space, taking (and reserving) a new one
// when the last is full.
func (s *spool) room() ([]byte, error) {
	if k := len(s.blocks); k > 0 && len(*s.blocks[k-1]) < blockSize {
		return *s.blocks[k-1], nil
	}
	if err := s.reserve(int64(len(s.blocks)+1) * blockSize); err != nil {
		return nil, err
	}
	bp := blocks.Get().(*[]byte)
	*bp = (*bp)[:0]
	s.blocks = append(s.blocks, bp)
	return *bp, nil
}

func (s *spool) grew(n int) {
	bp := s.blocks[len(s.blocks)-1]
	*bp = (*bp)[:len(*bp)+n]
	s.n += int64(n)
}

// Write appends p (the gzip writer's output).
func (s *spool) Write(p []byte) (int, error) {
	done := 0
	for len(p) > 0 {
		if s.max > 0 && s.n+int64(len(p)) > s.max {
			return done, errTooLarge
		}
		b, err := s.room()
		if err != nil {
			return done, err
		}
		k := copy(b[len(b):blockSize], p)
		s.grew(k)
		p, done = p[k:], done+k
	}
	return done, nil
}

// readFrom reads r to EOF.
func (s *spool) readFrom(r io.Reader) error {
	for {
		if s.max > 0 && s.n > s.max {
			return errTooLarge
		}
		b, err := s.room()
		if err != nil {
			return err
		}
		n, rerr := r.Read(b[len(b):blockSize])
		s.grew(n)
		if errors.Is(rerr, io.EOF) {
			if s.max > 0 && s.n > s.max {
				return errTooLarge
			}
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// readAtLeast reads r until the spool holds at least min bytes; io.EOF
// when r ended first (what was read is kept).
func (s *spool) readAtLeast(r io.Reader, min int64) error {
	for s.n < min {
		b, err := s.room()
		if err != nil {
			return err
		}
		n, rerr := r.Read(b[len(b):blockSize])
		s.grew(n)
		if rerr != nil {
			return rerr
		}
	}
	return nil
}

// scratch empties the spool and returns its first block as a read buffer;
// the reservation stays.
func (s *spool) scratch() []byte {
	if len(s.blocks) == 0 {
		if _, err := s.room(); err != nil { // the first reservation covers it
			return make([]byte, blockSize)
		}
	}
	for _, bp := range s.blocks[1:] {
		blocks.Put(bp)
	}
	s.blocks, s.n = s.blocks[:1], 0
	return (*s.blocks[0])[:blockSize]
}

// writeTo copies the held bytes to w.
func (s *spool) writeTo(w io.Writer) error {
	for _, bp := range s.blocks {
		if _, err := w.Write(*bp); err != nil {
			return err
		}
	}
	return nil
}

// base64Len is the length of the held bytes in standard base64.
func (s *spool) base64Len() int { return base64.StdEncoding.EncodedLen(int(s.n)) }

// appendBase64 appends the held bytes in standard base64.
func (s *spool) appendBase64(dst []byte) []byte {
	for _, bp := range s.blocks {
		n, k := len(dst), base64.StdEncoding.EncodedLen(len(*bp))
		if cap(dst)-n < k {
			dst = append(dst[:cap(dst)], make([]byte, n+k-cap(dst))...)[:n]
		}
		base64.StdEncoding.Encode(dst[n:n+k], *bp)
		dst = dst[:n+k]
	}
	return dst
}

// free returns the blocks and the reservation.
func (s *spool) free() {
	for _, bp := range s.blocks {
		blocks.Put(bp)
	}
	s.blocks = nil
	s.b.release(s.reserved)
	s.n, s.reserved = 0, 0
}
