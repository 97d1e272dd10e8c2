package testbin

import (
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

func sh(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	return p
}

func TestStartKeepsOutputAndEnvAndSIGTERMEndsIt(t *testing.T) {
	p := Start(t, sh(t), []string{"TESTBIN_X=hello"}, "-c", `trap 'echo bye; exit 0' TERM; echo "$TESTBIN_X"; while :; do sleep 0.05; done`)
	Eventually(t, 5*time.Second, "the greeting", func() bool { return strings.Contains(p.String(), "hello") })
	if p.Name != "sh" {
		t.Fatalf("Name = %q", p.Name)
	}
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("no exit after SIGTERM")
	}
	if err := p.Err(); err != nil || !strings.Contains(p.Out.String(), "bye") {
		t.Fatalf("exit %v, output %q", err, p.String())
	}
	p.Stop() // a no-op once it has exited
}

func TestKillAndStopTo(t *testing.T) {
	out := &Output{}
	a := StartTo(t, out, sh(t), nil, "-c", "echo one; exec sleep 60")
	Eventually(t, 5*time.Second, "the first run's output", func() bool { return strings.Contains(out.String(), "one") })
	a.Kill()
	if a.Err() == nil {
		t.Fatal("a killed process reported exit 0")
	}
	b := StartTo(t, out, sh(t), nil, "-c", "echo two; exec sleep 60")
	Eventually(t, 5*time.Second, "the second run's output", func() bool { return strings.Contains(b.String(), "two") })
	b.Stop()
	if got := out.String(); got != "one\ntwo\n" {
		t.Fatalf("output = %q", got)
	}
}

func TestFreePortIsListenable(t *testing.T) {
	if p := FreePort(t); p <= 0 || p > 65535 {
		t.Fatalf("port %d", p)
	}
}
