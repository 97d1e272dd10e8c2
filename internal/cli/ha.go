package cli

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
)

// newHACommand is "pipeopsctl ha": high availability across server nodes
// (docs/ha.md), through the local agent's API.
func newHACommand(e *env) *cli.Command {
	return &cli.Command{
		Name:  "ha",
		Usage: "high availability across server nodes: who leads, and hand over",
		Subcommands: []*cli.Command{
			{
				Name:  "status",
				Usage: "show this agent's role, the leader and since when, and the candidates",
				Flags: []cli.Flag{jsonFlag},
				Action: func(c *cli.Context) error {
					ctx, cancel := context.WithTimeout(c.Context, 5*time.Second)
					defer cancel()
					st, err := e.client.HA(ctx)
					if err != nil {
						return notRunningHint(err)
					}
					if c.Bool("json") {
						return writeJSON(e.stdout, st)
					}
					renderHA(e.stdout, st, e.now())
					return nil
				},
			},
			{
				Name:  "step-down",
				Usage: "if this agent leads, stop its work, release the lease and let a standby take over (it rejoins as a standby)",
				Flags: []cli.Flag{jsonFlag},
				Action: func(c *cli.Context) error {
					ctx, cancel := context.WithTimeout(c.Context, 30*time.Second)
					defer cancel()
					st, err := e.client.HAStepDown(ctx)
					if err != nil {
						return notRunningHint(err)
					}
					if c.Bool("json") {
						return writeJSON(e.stdout, st)
					}
					fmt.Fprintf(e.stdout, "%s is stepping down: a standby takes over within about %s; check with \"pipeopsctl ha status\"\n",
						st.Identity, st.RetryPeriod)
					return nil
				},
			},
		},
	}
}

// renderHA is the human view of `pipeopsctl ha status`.
func renderHA(w io.Writer, st *apitype.HAStatus, now time.Time) {
	fmt.Fprintf(w, "this agent:  %s (%s)\n", st.Identity, st.Role)
	if st.Leader != "" {
		since := ""
		if !st.LeaderSince.IsZero() {
			since = " since " + st.LeaderSince.UTC().Format(time.RFC3339) + " (" + ago(now, st.LeaderSince) + ")"
		}
		fmt.Fprintf(w, "leader:      %s%s\n", st.Leader, since)
	} else {
		fmt.Fprintln(w, "leader:      none (no agent holds the lease; one takes it within a retry period)")
	}
	fmt.Fprintf(w, "lease:       %s, renew deadline %s, retry every %s\n", st.LeaseDuration, st.RenewDeadline, st.RetryPeriod)
	if st.LastError != "" {
		fmt.Fprintf(w, "last error:  %s (shown from the last successful look)\n", st.LastError)
	}
	if len(st.Candidates) == 0 {
		return
	}
	fmt.Fprintln(w, "candidates:")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, c := range st.Candidates {
		role := "standby"
		switch {
		case c.Leader:
			role = "leader"
		case !c.Alive:
			role = "gone"
		}
		self := ""
		if c.Self {
			self = "\t(this agent)"
		}
		fmt.Fprintf(tw, "  %s\t%s\trenewed %s%s\n", c.Identity, role, ago(now, c.Renewed), self)
	}
	tw.Flush()
}
