package cli

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"strconv"

	"github.com/urfave/cli/v2"

	"github.com/pipeops/pipeops-vm-agent/internal/paths"
)

// defaultLines is how much history logs shows when neither -n nor --since is given.
const defaultLines = 100

func newLogsCommand(e *env) *cli.Command {
	return &cli.Command{
		Name:  "logs",
		Usage: "show the agent's logs from the systemd journal (runs journalctl)",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "follow", Aliases: []string{"f"}, Usage: "keep printing new lines"},
			&cli.StringFlag{Name: "since", Usage: "start at `TIME` (\"10 min ago\", \"2026-01-02 15:04\", \"today\")"},
			&cli.IntFlag{Name: "lines", Aliases: []string{"n"}, Usage: "show the last `N` lines (default 100 without --since)"},
			&cli.StringFlag{Name: "priority", Aliases: []string{"p"}, Usage: "only lines at `LEVEL` or worse (err, warning, info, debug)"},
			&cli.BoolFlag{Name: "boot", Aliases: []string{"b"}, Usage: "only this boot"},
			jsonFlag,
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return withCode(ExitUsage, fmt.Errorf("logs takes no arguments (got %q)", c.Args().First()))
			}
			jc, err := e.lookPath("journalctl")
			if err != nil {
				return withCode(ExitError, errors.New("journalctl not found: pipeops-agent logs to the systemd journal, "+
					"so read them on a host with systemd (install the systemd package), or run \"pipeops-agent run\" in the foreground"))
			}
			argv := journalArgs(c.Bool("follow"), c.String("since"), c.Int("lines"), c.IsSet("lines"), c.String("priority"), c.Bool("boot"), c.Bool("json"))
			if hint := journalAccessHint(); hint != "" {
				fmt.Fprintln(e.stderr, "note:", hint)
			}
			if err := e.execve(jc, argv, os.Environ()); err != nil {
				return fmt.Errorf("run %s: %w", jc, err)
			}
			return nil
		},
	}
}

// journalArgs maps the flags onto journalctl's (platform.md §3): the agent
// writes JSON lines, so -o cat shows them as written and -o json adds the
// journal's fields.
func journalArgs(follow bool, since string, lines int, linesSet bool, prio string, boot, asJSON bool) []string {
	out := "cat"
	if asJSON {
		out = "json"
	}
	argv := []string{"journalctl", "-u", paths.UnitName, "--no-pager", "-o", out}
	switch {
	case linesSet:
		argv = append(argv, "-n", strconv.Itoa(lines))
	case since == "":
		argv = append(argv, "-n", strconv.Itoa(defaultLines))
	}
	if since != "" {
		argv = append(argv, "--since", since)
	}
	if prio != "" {
		argv = append(argv, "-p", prio)
	}
	if boot {
		argv = append(argv, "-b")
	}
	if follow {
		argv = append(argv, "-f")
	}
	return argv
}

// journalAccessHint warns a user who will see nothing: journalctl shows the
// system journal only to root and the systemd-journal and adm groups.
func journalAccessHint() string {
	if os.Geteuid() == 0 {
		return ""
	}
	gids, _ := os.Getgroups()
	for _, name := range []string{"systemd-journal", "adm"} {
		g, err := user.LookupGroup(name)
		if err != nil {
			continue
		}
		for _, gid := range gids {
			if strconv.Itoa(gid) == g.Gid {
				return ""
			}
		}
	}
	return "only root and the systemd-journal and adm groups can read the agent's logs; use sudo, or \"sudo usermod -aG systemd-journal $USER\" and log in again"
}
