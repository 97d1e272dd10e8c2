package daemon

import (
	"context"
	"net"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/config"
	"github.com/pipeops/pipeops-vm-agent/internal/devplane"
	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

// fakeSystemd is the NOTIFY_SOCKET a Type=notify unit gets.
type fakeSystemd struct {
	mu       sync.Mutex
	lastPing time.Time
	pings    int
}

func listenNotify(t *testing.T) (*fakeSystemd, string) {
	t.Helper()
	path := filepath.Join(testbin.ShortTempDir(t), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	f := &fakeSystemd{}
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			if strings.Contains(string(buf[:n]), "WATCHDOG=1") {
				f.mu.Lock()
				f.lastPing, f.pings = time.Now(), f.pings+1
				f.mu.Unlock()
			}
		}
	}()
	return f, path
}

// silentFor reports whether no ping arrived during the last d.
func (f *fakeSystemd) silentFor(d time.Duration) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.pings > 0 && time.Since(f.lastPing) > d
}

func (f *fakeSystemd) count() int { f.mu.Lock(); defer f.mu.Unlock(); return f.pings }

// wedges blocks a watched loop in its next step while its name is wedged.
type wedges struct {
	mu sync.Mutex
	on map[string]chan struct{}
}

func (w *wedges) stall(loop string) {
	w.mu.Lock()
	ch := w.on[loop]
	w.mu.Unlock()
	if ch != nil {
		<-ch
	}
}

func (w *wedges) wedge(loop string) {
	w.mu.Lock()
	w.on[loop] = make(chan struct{})
	w.mu.Unlock()
}

func (w *wedges) release(loop string) {
	w.mu.Lock()
	close(w.on[loop])
	delete(w.on, loop)
	w.mu.Unlock()
}

// TestWedgingAnyWatchedLoopStopsTheWatchdogPings runs the whole agent
// in-process under a fake systemd (WatchdogSec 400 ms: pings every 200 ms,
// a loop may stay busy 1 s), wedges each long-running loop in turn through
// the stall hook, and checks that the pings stop, the stuck loop is the one
// named, and the pings resume once it is released.
func TestWedgingAnyWatchedLoopStopsTheWatchdogPings(t *testing.T) {
	env := kubetest.Cluster(t)
	sd, sock := listenNotify(t)
	t.Setenv("NOTIFY_SOCKET", sock)
	t.Setenv("WATCHDOG_USEC", "400000")
	plane := devplane.New(devplane.Config{Tokens: []string{"wd-token"}})
	srv := httptest.NewServer(plane.Handler())
	defer srv.Close()
	d := newInProcessAgent(t, env, srv.URL, "wd-token", func(c *config.Config) {
		c.Monitoring.Enabled = true // its rounds fail here (no Helm worker): the loop still runs
		c.Monitoring.Namespace = env.Namespace + "-mon"
	})
	w := &wedges{on: map[string]chan struct{}{}}
	d.health.SetStall(w.stall)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	testbin.Eventually(t, 60*time.Second, "heartbeating on the gateway with a tunnel", func() bool {
		cs := plane.Clusters()
		if len(cs) != 1 || !cs[0].Connected || cs[0].Mode != devplane.KindGateway || cs[0].Heartbeats == 0 {
			return false
		}
		wctx, stop := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer stop()
		return plane.WaitTunnel(wctx, cs[0].ID) == nil
	})
	id := plane.Clusters()[0].ID
	loops := []string{"daemon", "link", "link-reader", "link-writer", "dispatch", "routes", "tunnel-accept", "monitoring"}
	testbin.Eventually(t, 30*time.Second, "every loop watched", func() bool {
		got := d.health.Loops()
		for _, l := range loops {
			if !slices.Contains(got, l) {
				return false
			}
		}
		return true
	}, func() string { return strings.Join(d.health.Loops(), ",") })
	// What makes each loop take a step (the others step on their own:
	// the daemon every second, the link's heartbeats and their acks).
	poke := map[string]func(){
		"routes": d.routes.Resync,
		"tunnel-accept": func() {
			go func() { // the agent refuses the target; accepting it is the step
				sctx, stop := context.WithTimeout(context.Background(), 5*time.Second)
				defer stop()
				if c, err := plane.OpenTunnelStream(sctx, id, devplane.TunnelTarget{Service: "nothing-here"}); err == nil {
					c.Close()
				}
			}()
		},
		"monitoring": d.monitoring.Kick,
	}
	window := livenessWindow(200 * time.Millisecond)
	for _, loop := range loops {
		testbin.Eventually(t, 10*time.Second, "pinging before wedging "+loop, func() bool { return !sd.silentFor(300 * time.Millisecond) })
		w.wedge(loop)
		if p := poke[loop]; p != nil {
			p()
		}
		testbin.Eventually(t, 10*time.Second, "pings to stop with "+loop+" wedged", func() bool { return sd.silentFor(3 * 200 * time.Millisecond) })
		if stale := d.health.Stale(window); !slices.Contains(stale, loop) {
			t.Errorf("with %s wedged, the stuck loops are %v", loop, stale)
		}
		before := sd.count()
		w.release(loop)
		testbin.Eventually(t, 10*time.Second, "pings to resume after releasing "+loop, func() bool { return sd.count() > before })
	}
}
