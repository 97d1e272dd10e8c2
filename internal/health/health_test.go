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

func TestStaleNamesLoopsStuckInOneStepNotLoopsThatWait(t *testing.T) {
	now := time.Unix(1000, 0)
	tr := New(func() time.Time { return now })
	a, b, idle := tr.Loop("a"), tr.Loop("b"), tr.Loop("idle")
	a.Busy()
	b.Busy()
	now = now.Add(10 * time.Second)
	b.Idle() // b finished its step; idle waits forever, which is not a hang
	b.Busy()
	if got := tr.Stale(5 * time.Second); len(got) != 1 || got[0] != "a" {
		t.Fatalf("Stale() = %v; want [a]", got)
	}
	a.Done()
	idle.Idle()
	if got := tr.Stale(5 * time.Second); len(got) != 0 {
		t.Fatalf("Stale() after Done = %v; want none", got)
	}
	var nilLoop *Loop
	nilLoop.Busy() // optional watching: a nil loop does nothing
	if got := tr.Loops(); len(got) != 2 || got[0] != "b" || got[1] != "idle" {
		t.Fatalf("Loops() = %v; want [b idle]", got)
	}
}

func TestTheStallHookRunsInBusyWithTheLoopsName(t *testing.T) {
	tr := New(nil)
	var got []string
	tr.SetStall(func(loop string) { got = append(got, loop) })
	l := tr.Loop("link-reader")
	l.Busy()
	l.Idle()
	if len(got) != 1 || got[0] != "link-reader" {
		t.Fatalf("stall hook saw %v; want [link-reader]", got)
	}
}
