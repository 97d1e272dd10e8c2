package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/pipeops/pipeops-vm-agent/internal/version"
)

func newVersionCommand(e *env) *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "print pipeopsctl's version and, when it runs, the agent's",
		Flags: []cli.Flag{jsonFlag},
		Action: func(c *cli.Context) error {
			v := version.Get()
			ctx, cancel := context.WithTimeout(c.Context, 2*time.Second)
			defer cancel()
			agent := ""
			if st, err := e.client.Status(ctx); err == nil {
				agent = st.Version
			}
			if c.Bool("json") {
				return json.NewEncoder(e.stdout).Encode(map[string]any{"pipeopsctl": v, "agent_version": agent})
			}
			fmt.Fprintln(e.stdout, "pipeopsctl", v.String())
			if agent != "" {
				fmt.Fprintln(e.stdout, "agent     ", agent)
				if agent != v.Version {
					fmt.Fprintln(e.stderr, "warning: pipeopsctl and the running agent differ; restart the agent after an upgrade")
				}
			}
			return nil
		},
	}
}

var jsonFlag = &cli.BoolFlag{Name: "json", Usage: "print JSON for scripts"}

// writeJSON prints v as indented JSON, the --json output of every command.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
