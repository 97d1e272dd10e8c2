// Package sdnotify speaks systemd's notify protocol: READY=1, STATUS=,
// STOPPING=1 and the watchdog. Outside systemd (no $NOTIFY_SOCKET) every call
// is a no-op. It is the only package that imports go-systemd's daemon package.
package sdnotify

import (
	"context"
	"log/slog"
	"strings"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/pipeops/pipeops-vm-agent/internal/logging"
)

// Notifier sends state to systemd. The zero value is usable.
type Notifier struct {
	// Log receives failures to notify (best effort). May be nil.
	Log *slog.Logger
}

func (n *Notifier) send(state string) {
	if _, err := daemon.SdNotify(false, state); err != nil && n.Log != nil {
		n.Log.Warn("notify systemd", logging.KeyErr, err)
	}
}

// Ready tells systemd that start-up finished, with a one-line status.
func (n *Notifier) Ready(status string) { n.send(daemon.SdNotifyReady + "\nSTATUS=" + oneLine(status)) }

// Status updates the line `systemctl status` shows.
func (n *Notifier) Status(status string) { n.send("STATUS=" + oneLine(status)) }

// Stopping tells systemd that shutdown began.
func (n *Notifier) Stopping() { n.send(daemon.SdNotifyStopping) }

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 200 {
		s = s[:200]
	}
	return s
}

// Watchdog pings systemd at half of WatchdogSec, but only while Alive
// reports no watched loop stuck in one step. A pinger that checks nothing keeps
// a deadlocked daemon alive; when pings stop, systemd aborts the process and
// the goroutine dump lands in the journal.
type Watchdog struct {
	Notifier *Notifier
	// Alive returns the loops that are stuck; empty means healthy.
	Alive func() []string
	Log   *slog.Logger
	// Interval overrides the interval derived from $WATCHDOG_USEC (tests).
	Interval time.Duration
}

// WatchdogInterval is the ping interval systemd asked for (half of
// WatchdogSec), or 0 when the watchdog is off.
func WatchdogInterval() time.Duration {
	d, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		return 0
	}
	return d / 2
}

// Run blocks until ctx ends. Without a watchdog configured it returns at once.
func (w *Watchdog) Run(ctx context.Context) error {
	iv := w.Interval
	if iv == 0 {
		if iv = WatchdogInterval(); iv == 0 {
			return nil
		}
	}
	t := time.NewTicker(iv)
	defer t.Stop()
	wasStuck := false
	for {
		if stuck := w.Alive(); len(stuck) == 0 {
			w.Notifier.send(daemon.SdNotifyWatchdog)
			wasStuck = false
		} else if !wasStuck {
			wasStuck = true
			if w.Log != nil {
				w.Log.Error("a watched loop is stuck in one step; withholding watchdog pings so systemd restarts the agent",
					"stuck", strings.Join(stuck, ","))
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
