package backoff

import (
	"testing"
	"time"
)

func TestNextDoublesAndCapsWithinJitterBounds(t *testing.T) {
	for _, r := range []float64{0, 0.5, 0.999999} {
		b := New(time.Second, 15*time.Second)
		b.Rand = func() float64 { return r }
		want := []time.Duration{1, 2, 4, 8, 15, 15, 15}
		for i, w := range want {
			nominal := w * time.Second
			got := b.Next()
			lo, hi := time.Duration(float64(nominal)*0.75), time.Duration(float64(nominal)*1.25)
			if got < lo || got > hi {
				t.Fatalf("rand=%v attempt %d: Next() = %v; want within [%v, %v]", r, i, got, lo, hi)
			}
		}
	}
}

func TestResetStartsAgainFromBase(t *testing.T) {
	b := New(time.Second, 15*time.Second)
	b.Rand = func() float64 { return 0.5 } // no jitter at the midpoint
	for range 5 {
		b.Next()
	}
	b.Reset()
	if got := b.Next(); got != time.Second {
		t.Fatalf("after Reset, Next() = %v; want 1s", got)
	}
	if b.Attempt() != 1 {
		t.Fatalf("Attempt() = %d; want 1", b.Attempt())
	}
}

func TestAtCapIsJitteredAroundTheCapAndLeavesTheSequenceAlone(t *testing.T) {
	b := New(time.Second, 15*time.Second)
	for _, r := range []float64{0, 0.5, 0.999999} {
		b.Rand = func() float64 { return r }
		want := time.Duration(float64(15*time.Second) * (0.75 + 0.5*r))
		if got := b.AtCap(); got != want {
			t.Fatalf("rand=%v: AtCap() = %v; want %v", r, got, want)
		}
	}
	if b.Attempt() != 0 {
		t.Fatalf("AtCap advanced the sequence to attempt %d", b.Attempt())
	}
}
