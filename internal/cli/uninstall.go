package cli

import (
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"github.com/pipeops/pipeops-vm-agent/installer"
	"github.com/pipeops/pipeops-vm-agent/internal/paths"
)

func newUninstallCommand(e *env) *cli.Command {
	return &cli.Command{
		Name:  "uninstall",
		Usage: "stop the agent and remove its unit and binaries (--purge: also token, config, state and its cluster identity)",
		Description: "--purge also deletes, while the cluster is reachable, the agent's ServiceAccount, its token Secret\n" +
			"and every RBAC object granting it something (pipeops-agent remove-identity), so the token PipeOps\n" +
			"holds stops working at once.",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "purge", Usage: "also remove /etc/pipeops, /var/lib/pipeops, /var/cache/pipeops and the agent's ServiceAccount, token and RBAC in the cluster"},
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
			if c.Bool("purge") && !in.PackageOwned() {
				removeIdentity(c, e, in)
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

// removeIdentity stops the agent (a running one would mint a new token at
// once) and runs "pipeops-agent remove-identity" from the install's binary
// directory: pipeopsctl cannot link client-go, the agent binary can, and it
// finds the cluster exactly as the agent did. A cluster that cannot be
// reached does not stop the uninstall; the output says what is left.
func removeIdentity(c *cli.Context, e *env, in *installer.Installer) {
	if err := in.StopIfActive(c.Context); err != nil {
		fmt.Fprintf(e.stderr, "warning: %v\n", err)
	}
	root := c.String("root")
	agent := filepath.Join(root, c.String("bin-dir"), filepath.Base(paths.AgentBinary))
	args := []string{"remove-identity"}
	if filepath.Clean(root) != "/" {
		args = append(args, "--config", filepath.Join(root, paths.ConfigFile))
	}
	cmd := exec.CommandContext(c.Context, agent, args...)
	cmd.Stdout, cmd.Stderr = e.stdout, e.stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintf(e.stderr, "warning: the agent's ServiceAccount, token and RBAC may still be in the cluster (%v); "+
			"with the cluster reachable, delete the ServiceAccount pipeops-agent in the agent's namespace (kubernetes.namespace, "+
			"default pipeops-system), its pipeops-agent-token-* Secrets, the ClusterRoleBinding and ClusterRoles pipeops-agent*, "+
			"and the RoleBindings labelled pipeops.io/agent-namespace (docs/kubernetes.md, \"Revoking the identity\")\n", err)
	}
}
