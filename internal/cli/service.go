package cli

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/pipeops/pipeops-vm-agent/installer"
)

// newServiceCommand drives the unit through the installer's service manager
// (kardianos/service on a host). systemctl start waits for READY=1.
func newServiceCommand(e *env, verb string) *cli.Command {
	return &cli.Command{
		Name:  verb,
		Usage: verb + " the pipeops-agent service",
		Flags: []cli.Flag{rootFlag},
		Action: func(c *cli.Context) error {
			if err := needRoot(c.String("root")); err != nil {
				return err
			}
			in, err := installer.New(installer.Options{Root: c.String("root")})
			if err != nil {
				return err
			}
			do := map[string]func() error{"start": in.Start, "stop": in.Stop, "restart": in.Restart}[verb]
			if err := do(); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "pipeops-agent: %s done\n", verb)
			return nil
		},
	}
}
