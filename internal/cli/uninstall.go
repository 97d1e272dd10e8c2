package cli

import (
	"errors"
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/pipeops/pipeops-vm-agent/installer"
)

func init() { extraCommands = append(extraCommands, newUninstallCommand) }

func newUninstallCommand(e *env) *cli.Command {
	return &cli.Command{
		Name:  "uninstall",
		Usage: "stop the agent and remove its unit and binaries (--purge: also token, config and state)",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "purge", Usage: "also remove /etc/pipeops, /var/lib/pipeops and /var/cache/pipeops"},
			binDirFlag, rootFlag,
		},
		Action: func(c *cli.Context) error {
			if err := needRoot(c.String("root")); err != nil {
				return err
			}
			in, err := installer.New(installer.Options{Root: c.String("root"), BinDir: c.String("bin-dir"), Out: e.stdout})
			if err != nil {
				return err
			}
			removed, err := in.Uninstall(c.Context, c.Bool("purge"))
			for _, p := range removed {
				fmt.Fprintln(e.stdout, "removed", p)
			}
			if errors.Is(err, installer.ErrPackageOwned) {
				return withCode(ExitError, err)
			}
			if err != nil {
				return err
			}
			if !c.Bool("purge") {
				fmt.Fprintln(e.stdout, "kept the token, configuration and state; \"pipeopsctl uninstall --purge\" removes them too")
			}
			fmt.Fprintln(e.stdout, "pipeops-agent uninstalled")
			return nil
		},
	}
}
