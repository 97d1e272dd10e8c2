package e2e

import (
	"bytes"
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

// silence waits up to within for a stretch of quiet with no WATCHDOG=1.
func (f *fakeSystemd) silence(within, quiet time.Duration) bool {
	end := time.After(within)
	for {
		t := time.NewTimer(quiet)
		select {
		case m := <-f.msgs:
			t.Stop()
			if !strings.HasPrefix(m, "WATCHDOG=1") {
				continue
			}
		case <-t.C:
			return true
		case <-end:
			t.Stop()
			return false
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
// WATCHDOG=1 at half of WATCHDOG_USEC while its loops make progress,
// silence while a loop is wedged — the daemon's supervisor, then the link
// supervisor, through the test build's stall hook — pings again after, and
// STOPPING=1 on SIGTERM.
func TestTheAgentSpeaksSdNotifyAndStopsPingingWhenALoopWedges(t *testing.T) {
	bin := testbin.BuildTags(t, "pipeops-agent", "pipeops_testhooks")
	dir := testbin.ShortTempDir(t)
	sd := listenNotify(t, dir)
	cfg := filepath.Join(dir, "agent.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("version: 1\nagent:\n  port: %d\n  state_dir: %s\n  socket: %s\npipeops:\n  api_url: http://127.0.0.1:%d\n  reconnect: {interval: 100ms, max_interval: 300ms}\n",
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

	wedge := filepath.Join(dir, "wedge") // beside the socket: read by the test build's stall hook only
	for _, loop := range []string{"daemon", "link"} {
		if err := os.WriteFile(wedge, []byte(loop+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		// The loop wedges at its next step (the link's comes when its
		// current attempt ends), then may stay busy 1 s at this interval.
		if !sd.silence(30*time.Second, time.Second) {
			t.Fatalf("watchdog kept pinging while the %s loop was wedged", loop)
		}
		os.Remove(wedge)
		if recovered := sd.collect(2 * time.Second); count(recovered, "WATCHDOG=1") == 0 {
			t.Fatalf("watchdog did not resume after the %s loop recovered", loop)
		}
	}
	if !strings.Contains(p.String(), "withholding watchdog pings") {
		t.Error("the agent did not log which loops were stuck")
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

// TestTheProductionBuildHasNoStallHook checks that the test seam does not
// ship: the binary built without the pipeops_testhooks tag contains no code
// from daemon/stall_testhooks.go, and wedging has no effect on it.
func TestTheProductionBuildHasNoStallHook(t *testing.T) {
	b, err := os.ReadFile(testbin.Build(t, "pipeops-agent"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(b, []byte("stall_testhooks.go")) {
		t.Fatal("the production pipeops-agent contains the stall hook")
	}
	tagged, err := os.ReadFile(testbin.BuildTags(t, "pipeops-agent", "pipeops_testhooks"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(tagged, []byte("stall_testhooks.go")) {
		t.Fatal("the check is blind: the test build does not name stall_testhooks.go either")
	}
}
