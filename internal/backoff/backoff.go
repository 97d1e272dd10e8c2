// Package backoff computes jittered, capped, exponential delays
// (protocol.md §8.4: 1 s, doubling, capped at 15 s, ±25 %). Standard library only.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Backoff yields successive delays. The zero value is not useful; use New.
// It is not safe for concurrent use: each retry loop owns one.
type Backoff struct {
	Base   time.Duration
	Max    time.Duration
	Factor float64
	// Jitter is the symmetric fraction applied to each delay: 0.25 means
	// uniform in [0.75·d, 1.25·d].
	Jitter float64
	// Rand returns a number in [0, 1); tests inject a fixed source.
	Rand func() float64

	attempt int
}

// New returns the protocol's default backoff between base and max.
func New(base, max time.Duration) *Backoff {
	return &Backoff{Base: base, Max: max, Factor: 2, Jitter: 0.25, Rand: rand.Float64}
}

// Next returns the delay before the next attempt and advances the sequence.
func (b *Backoff) Next() time.Duration {
	d := b.Nominal(b.attempt)
	b.attempt++
	return b.jitter(d)
}

// AtCap returns a jittered delay at the cap, without advancing the
// sequence: for retries that must wait the longest (a rejected token) yet
// must not fire in lockstep across a fleet.
func (b *Backoff) AtCap() time.Duration { return b.jitter(b.Nominal(1 << 10)) }

func (b *Backoff) jitter(d time.Duration) time.Duration {
	if b.Jitter > 0 && b.Rand != nil {
		f := 1 - b.Jitter + 2*b.Jitter*b.Rand()
		d = time.Duration(float64(d) * f)
	}
	return d
}

// Nominal is the un-jittered delay for attempt n (0-based).
func (b *Backoff) Nominal(n int) time.Duration {
	d := float64(b.Base)
	for i := 0; i < n && d < float64(b.Max); i++ {
		d *= b.Factor
	}
	if b.Max > 0 && d > float64(b.Max) {
		d = float64(b.Max)
	}
	return time.Duration(d)
}

// Attempt is the number of delays handed out since the last Reset.
func (b *Backoff) Attempt() int { return b.attempt }

// Reset starts the sequence again from Base, after a connection proved healthy.
func (b *Backoff) Reset() { b.attempt = 0 }
