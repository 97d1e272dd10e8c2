package health

import (
	"testing"
	"time"
)

func TestReadyWaitsForEveryRequiredCondition(t *testing.T) {
	tr := New(nil)
	tr.Require(ControlPlane, "connecting")
	tr.Require(Kubernetes, "probing")
	if ok, reasons := tr.Ready(); ok || len(reasons) != 2 {
		t.Fatalf("Ready() = %v, %v; want false with 2 reasons", ok, reasons)
	}
	tr.Set(ControlPlane, true, "")
	if ok, reasons := tr.Ready(); ok || reasons[0] != "kubernetes: probing" {
		t.Fatalf("Ready() = %v, %v; want false, [kubernetes: probing]", ok, reasons)
	}
	tr.Set(Kubernetes, true, "")
	if ok, _ := tr.Ready(); !ok {
		t.Fatal("Ready() = false; want true once all required conditions are OK")
	}
	tr.Set("monitoring", false, "installing") // not required
	if ok, _ := tr.Ready(); !ok {
		t.Fatal("an optional condition must not gate readiness")
	}
}

func TestChangedFiresOnlyOnRealChanges(t *testing.T) {
	tr := New(nil)
	tr.Set("x", true, "")
	ch := tr.Changed()
	tr.Set("x", true, "")
	select {
	case <-ch:
		t.Fatal("Changed fired for an unchanged value")
	default:
	}
	tr.Set("x", false, "broken")
	select {
	case <-ch:
	default:
		t.Fatal("Changed did not fire for a real change")
	}
}

func TestStaleNamesLoopsThatStoppedBeating(t *testing.T) {
	now := time.Unix(1000, 0)
	tr := New(func() time.Time { return now })
	tr.Beat("a")
	tr.Beat("b")
	now = now.Add(10 * time.Second)
	tr.Beat("b")
	if got := tr.Stale(5 * time.Second); len(got) != 1 || got[0] != "a" {
		t.Fatalf("Stale() = %v; want [a]", got)
	}
	tr.Forget("a")
	if got := tr.Stale(5 * time.Second); len(got) != 0 {
		t.Fatalf("Stale() after Forget = %v; want none", got)
	}
}
