package sdnotify

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// fakeSystemd listens on a unixgram NOTIFY_SOCKET like systemd does.
func fakeSystemd(t *testing.T) <-chan string {
	t.Helper()
	dir, err := os.MkdirTemp("", "po") // short: sun_path holds 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	ch := make(chan string, 100)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				close(ch)
				return
			}
			ch <- string(buf[:n])
		}
	}()
	return ch
}

func next(t *testing.T, ch <-chan string) string {
	t.Helper()
	select {
	case m := <-ch:
		return m
	case <-time.After(5 * time.Second):
		t.Fatal("no notification within 5s")
	}
	return ""
}

func TestNotifySequence(t *testing.T) {
	ch := fakeSystemd(t)
	n := &Notifier{}
	n.Ready("starting: connecting to control plane")
	n.Status("connected to api.pipeops.io")
	n.Stopping()
	want := []string{"READY=1\nSTATUS=starting: connecting to control plane", "STATUS=connected to api.pipeops.io", "STOPPING=1"}
	for _, w := range want {
		if got := next(t, ch); got != w {
			t.Fatalf("got %q; want %q", got, w)
		}
	}
}

func TestWatchdogStopsWhenALoopWedges(t *testing.T) {
	ch := fakeSystemd(t)
	var stuck atomic.Bool
	w := &Watchdog{Notifier: &Notifier{}, Interval: 5 * time.Millisecond, Alive: func() []string {
		if stuck.Load() {
			return []string{"controlplane"}
		}
		return nil
	}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- w.Run(ctx) }()
	for range 3 {
		if got := next(t, ch); got != "WATCHDOG=1" {
			t.Fatalf("got %q; want WATCHDOG=1", got)
		}
	}
	stuck.Store(true)
	// Drain pings that raced with the flag, then expect silence.
	deadline := time.After(200 * time.Millisecond)
	quiet := 0
	for quiet < 1 {
		select {
		case m := <-ch:
			if !strings.HasPrefix(m, "WATCHDOG=1") {
				t.Fatalf("unexpected %q", m)
			}
		case <-deadline:
			quiet++
		}
	}
	select {
	case m := <-ch:
		t.Fatalf("watchdog pinged %q while a loop was wedged", m)
	case <-time.After(50 * time.Millisecond):
	}
	stuck.Store(false)
	if got := next(t, ch); got != "WATCHDOG=1" {
		t.Fatalf("after recovery got %q; want WATCHDOG=1", got)
	}
	cancel()
	<-done
}

func TestNoSocketIsANoOp(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	n := &Notifier{}
	n.Ready("x") // must not panic or block
	w := &Watchdog{Notifier: n, Alive: func() []string { return nil }}
	t.Setenv("WATCHDOG_USEC", "")
	if err := w.Run(context.Background()); err != nil {
		t.Fatalf("Run without watchdog = %v; want nil", err)
	}
}
