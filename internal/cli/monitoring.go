package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/localclient"
)

func newMonitoringCommand(e *env) *cli.Command {
	return &cli.Command{
		Name:  "monitoring",
		Usage: "show, install or uninstall the cluster components: metrics-server, VPA, the CoreDNS rewrite, Traefik, cert-manager, Prometheus, Grafana, Loki",
		Subcommands: []*cli.Command{
			{
				Name:  "status",
				Usage: "show each component (on or off in the configuration, and its state) and the advertised endpoints",
				Flags: []cli.Flag{jsonFlag},
				Action: func(c *cli.Context) error {
					ctx, cancel := context.WithTimeout(c.Context, 5*time.Second)
					defer cancel()
					st, err := e.client.Monitoring(ctx)
					if err != nil {
						return notRunningHint(err)
					}
					if c.Bool("json") {
						return writeJSON(e.stdout, st)
					}
					renderMonitoring(e.stdout, st, e.now())
					return nil
				},
			},
			{
				Name:  "install",
				Usage: "install or upgrade the stack now and wait until every release is ready",
				Flags: []cli.Flag{jsonFlag, &cli.DurationFlag{Name: "timeout", Value: 45 * time.Minute, Usage: "give up waiting after this long (the agent keeps going)"}},
				Action: func(c *cli.Context) error {
					return monitoringAction(c, e, "install")
				},
			},
			{
				Name:  "uninstall",
				Usage: "uninstall every release of the stack (until \"monitoring install\" or an agent restart)",
				Flags: []cli.Flag{jsonFlag, &cli.BoolFlag{Name: "yes", Aliases: []string{"y"}, Usage: "do not ask for confirmation"},
					&cli.DurationFlag{Name: "timeout", Value: 15 * time.Minute, Usage: "give up waiting after this long"}},
				Action: func(c *cli.Context) error {
					if !c.Bool("yes") && !askYes(e, "Uninstall the monitoring stack? Its dashboards and data go with it. [y/N] ") {
						return withCode(ExitError, errors.New("uninstall cancelled"))
					}
					return monitoringAction(c, e, "uninstall")
				},
			},
		},
	}
}

func askYes(e *env, prompt string) bool {
	fmt.Fprint(e.stdout, prompt)
	line, err := bufio.NewReader(e.stdin).ReadString('\n')
	if err != nil {
		fmt.Fprintln(e.stdout) // no answer (EOF): end the prompt's line
	}
	a := strings.ToLower(strings.TrimSpace(line))
	return a == "y" || a == "yes"
}

func notRunningHint(err error) error {
	if errors.Is(err, localclient.ErrAgentNotRunning) {
		return withCode(ExitNotRunning, &apitype.Error{Message: err.Error(),
			Hint: "start it with \"sudo systemctl start pipeops-agent\", or see \"pipeopsctl status\""})
	}
	return err
}

// monitoringAction streams the agent's monProgress: a live table on a
// terminal, one line per step otherwise, NDJSON with --json.
func monitoringAction(c *cli.Context, e *env, action string) error {
	ctx, cancel := context.WithTimeout(c.Context, c.Duration("timeout"))
	defer cancel()
	p := &monProgress{w: e.stdout, tty: isTTY(e.stdout), now: e.now, start: e.now(), rel: map[string]apitype.Release{}}
	events := make(chan apitype.MonitoringEvent)
	errc := make(chan error, 1)
	go func() {
		errc <- e.client.MonitoringAction(ctx, action, func(ev apitype.MonitoringEvent) error {
			select {
			case events <- ev:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	}()
	var tick <-chan time.Time
	if p.tty && !c.Bool("json") {
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		tick = t.C
	}
	enc := json.NewEncoder(e.stdout)
	var final *apitype.MonitoringEvent
	for {
		select {
		case ev := <-events:
			switch {
			case c.Bool("json"):
				_ = enc.Encode(ev)
			case ev.Done:
			default:
				p.event(ev)
			}
			if ev.Done {
				final = &ev
			}
		case <-tick:
			p.redraw()
		case err := <-errc:
			if err != nil {
				if errors.Is(err, context.DeadlineExceeded) {
					return &apitype.Error{Message: fmt.Sprintf("gave up waiting after %s; the agent keeps working on it", c.Duration("timeout")),
						Hint: "follow it with \"pipeopsctl monitoring status\""}
				}
				return notRunningHint(err)
			}
			return p.finish(action, final, c.Bool("json"))
		}
	}
}

// monProgress draws the releases' states as they change.
type monProgress struct {
	w     io.Writer
	tty   bool
	now   func() time.Time
	start time.Time
	order []string
	rel   map[string]apitype.Release
	drawn int
	frame int
}

func (p *monProgress) event(ev apitype.MonitoringEvent) {
	r := ev.Release
	if r.Name == "" {
		return
	}
	if _, seen := p.rel[r.Name]; !seen {
		p.order = append(p.order, r.Name)
	}
	p.rel[r.Name] = r
	if p.tty {
		p.redraw()
		return
	}
	fmt.Fprintf(p.w, "[%5s] %s\n", p.now().Sub(p.start).Round(time.Second), releaseLine(r))
}

// redraw rewrites the table in place (ANSI: cursor up, clear line).
func (p *monProgress) redraw() {
	if !p.tty || len(p.order) == 0 {
		return
	}
	if p.drawn > 0 {
		fmt.Fprintf(p.w, "\x1b[%dA", p.drawn)
	}
	p.frame++
	spin := `|/-\`[p.frame%4]
	for _, n := range p.order {
		r := p.rel[n]
		mark := map[string]byte{apitype.ReleaseReady: '+', apitype.ReleaseFailed: 'x', apitype.ReleaseSkipped: '-', apitype.ReleaseDisabled: '-'}[r.State]
		if mark == 0 {
			mark = spin
		}
		fmt.Fprintf(p.w, "\x1b[2K %c %s\n", mark, clip(releaseLine(r), 110))
	}
	fmt.Fprintf(p.w, "\x1b[2K   %s elapsed\n", p.now().Sub(p.start).Round(time.Second))
	p.drawn = len(p.order) + 1
}

func releaseLine(r apitype.Release) string {
	s := fmt.Sprintf("%-24s %-12s", r.Name, r.State)
	if r.Reason != "" {
		s += " " + r.Reason
	}
	return strings.TrimRight(s, " ")
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}

func (p *monProgress) finish(action string, final *apitype.MonitoringEvent, jsonOut bool) error {
	p.redraw()
	if final == nil {
		return fmt.Errorf("the agent ended the %s stream early; see \"pipeopsctl monitoring status\"", action)
	}
	if final.Error != "" {
		return &apitype.Error{Message: "monitoring " + action + " failed: " + final.Error,
			Hint: "the agent retries on its own; see \"pipeopsctl monitoring status\" and \"pipeopsctl logs -n 100\""}
	}
	if jsonOut {
		return nil
	}
	if action == "uninstall" {
		fmt.Fprintln(p.w, "monitoring stack uninstalled (namespaces, CRDs and volumes are kept)")
		fmt.Fprintln(p.w, "set monitoring.enabled: false to keep it uninstalled after the agent restarts")
		return nil
	}
	count := map[string]int{}
	for _, r := range final.Status.Releases {
		count[r.State]++
	}
	line := fmt.Sprintf("monitoring stack ready: %d component%s", count[apitype.ReleaseReady], map[bool]string{true: "", false: "s"}[count[apitype.ReleaseReady] == 1])
	for _, st := range []string{apitype.ReleaseSkipped, apitype.ReleaseDisabled} {
		if count[st] > 0 {
			line += fmt.Sprintf(", %d %s", count[st], st)
		}
	}
	fmt.Fprintln(p.w, line)
	for _, ep := range final.Status.Endpoints {
		fmt.Fprintf(p.w, "  %-11s %s\n", ep.Name, ep.URL)
	}
	return nil
}

// renderMonitoring is `pipeopsctl monitoring status`.
func renderMonitoring(w io.Writer, st *apitype.MonitoringStatus, now time.Time) {
	state := "enabled"
	switch {
	case !st.Enabled:
		state = "disabled (set monitoring.enabled: true)"
	case st.Suspended:
		state = "uninstalled (run \"pipeopsctl monitoring install\")"
	}
	fmt.Fprintf(w, "Monitoring:  %s", state)
	if st.Profile != "" {
		fmt.Fprintf(w, ", profile %s", st.Profile)
	}
	if st.Enabled {
		fmt.Fprintf(w, ", last round %s", ago(now, st.LastRound))
	}
	fmt.Fprintln(w)
	if len(st.Releases) > 0 {
		fmt.Fprintf(w, "\n%-15s %-24s %-20s %-34s %-12s %s\n", "COMPONENT", "RELEASE", "NAMESPACE", "CHART", "STATE", "REASON")
		for _, r := range st.Releases {
			chart := r.Chart
			if r.Version != "" {
				chart += " " + r.Version
			}
			if r.Revision > 0 {
				chart += fmt.Sprintf(" (r%d)", r.Revision)
			}
			if chart == "" {
				chart = "-"
			}
			fmt.Fprintln(w, strings.TrimRight(fmt.Sprintf("%-15s %-24s %-20s %-34s %-12s %s", r.Component, r.Name, r.Namespace, chart, r.State, r.Reason), " "))
		}
	}
	if len(st.Endpoints) > 0 {
		fmt.Fprintln(w, "\nEndpoints:")
		for _, ep := range st.Endpoints {
			fmt.Fprintf(w, "  %-11s %s\n", ep.Name, ep.URL)
		}
	}
	if st.LastError != "" {
		fmt.Fprintf(w, "\nLast error:  %s\n", st.LastError)
		if !st.NextRetry.IsZero() {
			d := st.NextRetry.Sub(now).Round(time.Second)
			fmt.Fprintf(w, "Next retry:  in %s\n", max(d, 0))
		}
	}
}

// isTerminal reports whether w is a character device (a live terminal).
func isTTY(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
