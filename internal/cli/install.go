package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/pipeops/pipeops-vm-agent/installer"
	"github.com/pipeops/pipeops-vm-agent/internal/config"
	"github.com/pipeops/pipeops-vm-agent/internal/paths"
)

// rootFlag installs into a directory tree instead of / (tests, image builds).
var rootFlag = &cli.StringFlag{Name: "root", Value: "/", Hidden: true, Usage: "install below this directory"}

// binDirFlag names where the binaries live; the unit expects /usr/bin.
var binDirFlag = &cli.StringFlag{Name: "bin-dir", Value: filepath.Dir(paths.AgentBinary),
	Usage: "directory holding pipeops-agent and pipeopsctl (another one than /usr/bin gets an ExecStart= drop-in)"}

func newInstallCommand(e *env) *cli.Command {
	return &cli.Command{
		Name:  "install",
		Usage: "install or update the systemd service, token and settings; restarts only when something changed",
		Description: "The token is read from --token-file (\"-\" for stdin), else from stdin when it is not a terminal,\n" +
			"else from a prompt on the terminal. It never goes on the command line. Without a new token,\n" +
			"the installed one is kept.\n\n" +
			"Where systemd-creds works (systemd 250+), the token is stored as an encrypted systemd credential\n" +
			"in " + paths.EncryptedTokenFile + " (LoadCredentialEncrypted=), bound to this host's\n" +
			"key (and its TPM2 chip, if any); elsewhere in " + paths.TokenFile + " (mode 0600).",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "token-file", Usage: "read the install token from `FILE` (\"-\" = stdin)"},
			&cli.StringFlag{Name: "api-url", Usage: "control plane URL (written to agent.d/10-install.yaml)"},
			&cli.StringFlag{Name: "cluster-name", Usage: "name this cluster registers with"},
			&cli.BoolFlag{Name: "ha", Usage: "high availability: install on every server node with the same token; one agent is active at a time (ha.enabled)"},
			&cli.StringFlag{Name: "token-storage", Value: string(installer.TokenAuto),
				Usage: "`HOW` to keep the token: auto (encrypted where systemd-creds works), encrypted, or plain (" + paths.TokenFile + ", 0600)"},
			binDirFlag,
			&cli.BoolFlag{Name: "restart", Usage: "restart the agent even when nothing changed (new binaries)"},
			&cli.BoolFlag{Name: "no-start", Usage: "enable the service but do not start it"},
			rootFlag,
		},
		Action: func(c *cli.Context) error {
			root := c.String("root")
			if err := needRoot(root); err != nil {
				return err
			}
			storage, err := installer.ParseTokenStorage(c.String("token-storage"))
			if err != nil {
				return withCode(ExitUsage, err)
			}
			tok, err := readToken(e, c.String("token-file"), filepath.Join(root, paths.TokenFile), filepath.Join(root, paths.EncryptedTokenFile))
			if err != nil {
				return err
			}
			in, err := installer.New(installer.Options{
				Root: root, BinDir: c.String("bin-dir"), Token: tok, TokenStorage: storage, APIURL: c.String("api-url"),
				ClusterName: c.String("cluster-name"), HA: c.Bool("ha"), Restart: c.Bool("restart"), NoStart: c.Bool("no-start"), Out: e.stdout,
			})
			if err != nil {
				return err
			}
			res, err := in.Install(c.Context)
			if err != nil {
				return err
			}
			changed := "nothing changed"
			if len(res.Changed) > 0 {
				changed = "updated " + strings.Join(res.Changed, ", ")
			}
			if res.PackageOwned {
				changed += " (the unit comes from the package)"
			}
			action := map[string]string{"unchanged": "already running, not restarted", "not started": "not started (--no-start)"}[res.Action]
			if action == "" {
				action = res.Action
			}
			fmt.Fprintf(e.stdout, "pipeops-agent installed: %s; service %s\n", changed, action)
			fmt.Fprintln(e.stdout, "check it with \"pipeopsctl status\"; follow its logs with \"pipeopsctl logs -f\"")
			return nil
		},
	}
}

// needRoot refuses to touch / without root, before anything is read.
func needRoot(root string) error {
	if filepath.Clean(root) == "/" && os.Geteuid() != 0 {
		return withCode(ExitError, errors.New("this changes the system: run it as root (sudo pipeopsctl ...)"))
	}
	return nil
}

// readToken finds the token: --token-file (or "-" for stdin); else keep an
// existing token file; else stdin when piped; else a prompt on the terminal
// with echo off. It returns "" to keep the existing token.
func readToken(e *env, file, existing, encrypted string) (config.Secret, error) {
	var (
		b   []byte
		src = "stdin"
	)
	switch {
	case file == "-":
		b = readLimited(e.stdin)
	case file != "":
		var err error
		if b, err = os.ReadFile(file); err != nil {
			return "", fmt.Errorf("read token file: %w", err)
		}
		src = file
	default:
		if old, err := os.ReadFile(existing); err == nil && strings.TrimSpace(string(old)) != "" {
			return "", nil // keep it
		}
		if st, err := os.Stat(encrypted); err == nil && st.Size() > 0 {
			return "", nil // keep the encrypted one
		}
		if f, ok := e.stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			return promptToken(e, f)
		}
		b = readLimited(e.stdin)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("no token in %s: pass the install token PipeOps showed you with --token-file FILE", src)
	}
	return config.Secret(tok), nil
}

func readLimited(r io.Reader) []byte {
	if r == nil {
		return nil
	}
	b, _ := io.ReadAll(io.LimitReader(r, 64<<10))
	return b
}

// promptToken asks on the terminal without echoing what is typed.
func promptToken(e *env, tty *os.File) (config.Secret, error) {
	fmt.Fprint(e.stderr, "PipeOps install token (input hidden): ")
	b, err := term.ReadPassword(int(tty.Fd()))
	fmt.Fprintln(e.stderr)
	if err != nil {
		return "", fmt.Errorf("read the token from the terminal: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", errors.New("no token entered: pass it with --token-file FILE")
	}
	return config.Secret(tok), nil
}
