package e2e

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

// fakeSystemd is the NOTIFY_SOCKET systemd gives a Type=notify unit.
type fakeSystemd struct {
	path string
	msgs chan string
}

func listenNotify(t *testing.T, dir string) *fakeSystemd {
	t.Helper()
	path := filepath.Join(dir, "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	f := &fakeSystemd{path: path, msgs: make(chan string, 1024)}
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			f.msgs <- string(buf[:n])
		}
	}()
	return f
}

// collect returns every notification received during d.
func (f *fakeSystemd) collect(d time.Duration) []string {
	var got []string
	end := time.After(d)
	for {
		select {
		case m := <-f.msgs:
			got = append(got, m)
		case <-end:
			return got
		}
	}
}

func count(msgs []string, prefix string) int {
	n := 0
	for _, m := range msgs {
		if strings.HasPrefix(m, prefix) {
			n++
		}
	}
	return n
}

// TestTheAgentSpeaksSdNotifyAndStopsPingingWhenALoopWedges runs the real
// binary under a fake systemd: READY=1 with a STATUS line once local init is
// done (the control plane is unreachable, so it must not wait for it),
// WATCHDOG=1 at half of WATCHDOG_USEC while its loops beat, silence while the
// hidden debug trigger wedges the daemon loop, pings again after, and
// STOPPING=1 on SIGTERM.
func TestTheAgentSpeaksSdNotifyAndStopsPingingWhenALoopWedges(t *testing.T) {
	bin := testbin.Build(t, "pipeops-agent")
	dir := testbin.ShortTempDir(t)
	sd := listenNotify(t, dir)
	cfg := filepath.Join(dir, "agent.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("version: 1\nagent:\n  port: %d\n  state_dir: %s\n  socket: %s\npipeops:\n  api_url: http://127.0.0.1:%d\n",
		testbin.FreePort(t), filepath.Join(dir, "state"), filepath.Join(dir, "agent.sock"), testbin.FreePort(t))), 0o600)
	p := testbin.Start(t, bin, []string{"PIPEOPS_TOKEN=t", "NOTIFY_SOCKET=" + sd.path, "WATCHDOG_USEC=400000"}, "run", "--config", cfg)

	select {
	case m := <-sd.msgs:
		if !strings.HasPrefix(m, "READY=1\nSTATUS=") {
			t.Fatalf("first notification = %q; want READY=1 with a STATUS line", m)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("no READY=1 within 20s\n%s", p.String())
	}
	healthy := sd.collect(2 * time.Second)
	if n := count(healthy, "WATCHDOG=1"); n < 3 {
		t.Fatalf("got %d watchdog pings in 2s at a 200ms interval; want several: %q", n, healthy)
	}
	if count(healthy, "STATUS=not ready") == 0 {
		t.Errorf("no STATUS line saying why the agent is not ready: %q", healthy)
	}

	wedge := filepath.Join(dir, "debug-wedge") // beside the socket: the hidden trigger
	if err := os.WriteFile(wedge, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	sd.collect(5 * time.Second) // the liveness window is 3s at this watchdog interval
	if wedged := sd.collect(2 * time.Second); count(wedged, "WATCHDOG=1") != 0 {
		t.Fatalf("watchdog kept pinging while the daemon loop was wedged: %q", wedged)
	}
	os.Remove(wedge)
	if recovered := sd.collect(3 * time.Second); count(recovered, "WATCHDOG=1") == 0 {
		t.Fatalf("watchdog did not resume after the loop recovered")
	}

	p.Signal(syscall.SIGTERM)
	select {
	case <-p.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("no exit within 10s of SIGTERM")
	}
	if err := p.Err(); err != nil {
		t.Fatalf("exit after SIGTERM = %v; want 0", err)
	}
	if rest := sd.collect(200 * time.Millisecond); count(rest, "STOPPING=1") != 1 {
		t.Fatalf("want exactly one STOPPING=1 after SIGTERM, got %q", rest)
	}
}
