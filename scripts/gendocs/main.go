// Command gendocs writes the documentation the packages ship, generated from
// the command-line definitions themselves (never kept by hand):
//
//	OUT/man/pipeopsctl.1.gz      from pipeopsctl's urfave/cli command tree
//	OUT/man/pipeops-agent.8.gz   from daemon.Commands and config.EnvVars
//	OUT/completions/{pipeopsctl,_pipeopsctl,pipeopsctl.fish}   "pipeopsctl completion bash|zsh|fish"
//
// It runs at build time (goreleaser's before hook, `make docs`): go run
// ./scripts/gendocs OUT. The man pages go through urfave/cli's markdown
// renderer, which therefore stays out of pipeopsctl (built with the
// urfave_cli_no_docs tag).
package main

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cpuguy83/go-md2man/v2/md2man"
	"github.com/urfave/cli/v2"

	"github.com/pipeops/pipeops-vm-agent/daemon"
	ctl "github.com/pipeops/pipeops-vm-agent/internal/cli"
	"github.com/pipeops/pipeops-vm-agent/internal/config"
	"github.com/pipeops/pipeops-vm-agent/internal/paths"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: go run ./scripts/gendocs OUTDIR")
		os.Exit(2)
	}
	if err := generate(os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "gendocs:", err)
		os.Exit(1)
	}
}

func generate(out string) error {
	files := map[string][]byte{}
	for _, p := range []struct {
		name    string
		section int
		app     *cli.App
	}{{"pipeopsctl", 1, pipeopsctlApp()}, {"pipeops-agent", 8, agentApp()}} {
		man, err := manPage(p.app, p.section)
		if err != nil {
			return fmt.Errorf("render %s(%d): %w", p.name, p.section, err)
		}
		gz, err := gzipped(man)
		if err != nil {
			return err
		}
		files[fmt.Sprintf("man/%s.%d.gz", p.name, p.section)] = gz
	}
	for shell, name := range map[string]string{"bash": "pipeopsctl", "zsh": "_pipeopsctl", "fish": "pipeopsctl.fish"} {
		s, err := ctl.CompletionScript(shell)
		if err != nil {
			return err
		}
		files["completions/"+name] = []byte(s)
	}
	for name, b := range files {
		p := filepath.Join(out, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// gzipped compresses like `gzip -9n`: no name, no timestamp, so the same
// input gives the same bytes (lintian and reproducible builds want that).
func gzipped(b []byte) ([]byte, error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return nil, err
	}
	if _, err := zw.Write(b); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// manPage renders app as a man page: the markdown is written here from the
// command tree (urfave/cli's own template files every command under .SH),
// then turned into roff by go-md2man, the renderer urfave/cli uses.
func manPage(app *cli.App, section int) ([]byte, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "%% %s %d\n\n# NAME\n\n%s - %s\n\n", app.Name, section, app.Name, app.Usage)
	fmt.Fprintf(&b, "# SYNOPSIS\n\n%s\n\n# DESCRIPTION\n\n%s\n\n", app.UsageText, app.Description)
	if fl := visibleFlags(app.Flags); len(fl) > 0 {
		b.WriteString("# GLOBAL OPTIONS\n\n")
		writeFlags(&b, fl)
	}
	b.WriteString("# COMMANDS\n\n")
	writeCommands(&b, app.Commands, "")
	extra, _ := app.Metadata["sections"].(string)
	b.WriteString(extra)
	return md2man.Render([]byte(b.String())), nil
}

func writeCommands(b *strings.Builder, cmds []*cli.Command, parent string) {
	for _, c := range cmds {
		if c.Hidden || c.Name == "help" {
			continue
		}
		name := strings.TrimSpace(parent + " " + c.Name)
		head := "**" + name + "**"
		if c.ArgsUsage != "" {
			head += " *" + c.ArgsUsage + "*"
		}
		fmt.Fprintf(b, "### %s\n\n%s.", head, strings.TrimSuffix(c.Usage, "."))
		if c.Description != "" {
			b.WriteString(" " + c.Description)
		}
		b.WriteString("\n\n")
		writeFlags(b, visibleFlags(c.Flags))
		writeCommands(b, c.Subcommands, name)
	}
}

func visibleFlags(flags []cli.Flag) []cli.DocGenerationFlag {
	var out []cli.DocGenerationFlag
	for _, f := range flags {
		d, ok := f.(cli.DocGenerationFlag)
		if v, vok := f.(cli.VisibleFlag); ok && vok && v.IsVisible() {
			out = append(out, d)
		}
	}
	return out
}

// writeFlags is a definition list: **--name**, **-n** *VALUE* then the usage.
func writeFlags(b *strings.Builder, flags []cli.DocGenerationFlag) {
	for _, f := range flags {
		var names []string
		for _, n := range f.Names() {
			dash := "--"
			if len(n) == 1 {
				dash = "-"
			}
			names = append(names, "**"+dash+n+"**")
		}
		arg, usage := unquoteUsage(f.GetUsage())
		if arg == "" && f.TakesValue() {
			arg = "value"
		}
		term := strings.Join(names, ", ")
		if f.TakesValue() {
			term += " *" + arg + "*"
		}
		def := f.GetDefaultText()
		if def == "" {
			def = f.GetValue()
		}
		if f.TakesValue() && def != "" && def != "0" && def != `""` && !strings.Contains(usage, "default") {
			usage += " (default " + def + ")"
		}
		fmt.Fprintf(b, "%s\n: %s\n\n", term, usage)
	}
}

// unquoteUsage takes the value's name from a `BACKQUOTED` word of the
// usage, as urfave/cli's help does.
func unquoteUsage(usage string) (arg, text string) {
	if i := strings.IndexByte(usage, '`'); i >= 0 {
		if j := strings.IndexByte(usage[i+1:], '`'); j >= 0 {
			arg = usage[i+1 : i+1+j]
			return arg, usage[:i] + arg + usage[i+2+j:]
		}
	}
	return "", usage
}

// pipeopsctlApp is pipeopsctl's own command tree plus the man-only sections.
func pipeopsctlApp() *cli.App {
	app := ctl.App()
	app.UsageText = "**pipeopsctl** [**--socket** *PATH*] *command* [*command options*] [*arguments*...]"
	app.Metadata = map[string]any{"sections": sections(
		section{"ENVIRONMENT", "**PIPEOPS_SOCKET**\n: the agent's local API socket (default " + paths.DefaultRuntime + "/agent.sock).\n\n" +
			"**PIPEOPS_CONFIG**, **PIPEOPS_KUBECONFIG**, **KUBECONFIG**\n: read by **config** and **doctor** as the agent reads them; see **pipeops-agent**(8).\n"},
		section{"FILES", filesSection()},
		section{"EXIT STATUS", "**0**\n: success.\n\n**1**\n: the command failed; the message says what to do next.\n\n" +
			"**2**\n: usage error.\n\n**3**\n: **status** only: the agent is not running (as with **systemctl status**).\n"},
		section{"SEE ALSO", "**pipeops-agent**(8), **systemctl**(1), **journalctl**(1)\n"},
	)}
	return app
}

// agentApp describes pipeops-agent for the man page: its commands and
// flags from daemon.Commands, its environment from config.EnvVars.
func agentApp() *cli.App {
	app := &cli.App{
		Name:      "pipeops-agent",
		Usage:     daemon.Summary,
		UsageText: "**pipeops-agent run** [**--config** *FILE*]\n\n**pipeops-agent version**",
		Description: "**pipeops-agent** runs on the VM host under systemd (**pipeops-agent.service**). It holds one outbound " +
			"WebSocket to the PipeOps control plane (no inbound ports), registers the cluster, sends heartbeats, proxies the " +
			"control plane's Kubernetes API requests and cluster Service traffic, carries reverse tunnels, registers Ingress " +
			"routes and can install a monitoring stack. Install, inspect and diagnose it with **pipeopsctl**(1); it is " +
			"not meant to be started by hand except for debugging.\n\n" +
			"Configuration layers apply in this order: built-in defaults, " + paths.ConfigFile + ", " + paths.DropInDir +
			"/*.yaml in lexical order, then the environment. Unknown keys are errors. The install token is never in the " +
			"configuration: it comes from **PIPEOPS_TOKEN**, **PIPEOPS_TOKEN_FILE**, the systemd credential *token*, or " +
			paths.TokenFile + ".",
	}
	for _, c := range daemon.Commands {
		cmd := &cli.Command{Name: c.Name, Usage: c.Usage}
		for _, f := range c.Flags {
			// The value's name is written in the usage (urfave/cli's `ARG` convention).
			cmd.Flags = append(cmd.Flags, &cli.StringFlag{Name: f.Name, Usage: strings.Replace(f.Usage, f.Arg, "`"+f.Arg+"`", 1)})
		}
		app.Commands = append(app.Commands, cmd)
	}
	var env strings.Builder
	for _, v := range config.EnvVars {
		fmt.Fprintf(&env, "**%s**\n: %s\n\n", v.Name, v.Doc)
	}
	env.WriteString("**HTTPS_PROXY**, **NO_PROXY**\n: the proxy for the control-plane link; set them in " + paths.DefaultsFile + ".\n")
	app.Metadata = map[string]any{"sections": sections(
		section{"ENVIRONMENT", env.String()},
		section{"FILES", filesSection()},
		section{"EXIT STATUS", "**0**\n: stopped cleanly.\n\n**1**\n: runtime failure; systemd restarts the agent.\n\n" +
			"**2**\n: invalid configuration or usage; systemd does not restart it (**RestartPreventExitStatus=2**). " +
			"Check the configuration with **pipeopsctl config validate**.\n"},
		section{"SEE ALSO", "**pipeopsctl**(1), **systemd.service**(5), **journalctl**(1)\n"},
	)}
	return app
}

func filesSection() string {
	rows := [][2]string{
		{paths.ConfigFile, "packaged defaults; never edited by the agent or the installer"},
		{paths.DropInDir + "/*.yaml", "settings, read in lexical order (the installer writes 10-install.yaml)"},
		{paths.TokenFile, "the install token (0600)"},
		{paths.DefaultsFile, "environment of the service (HTTPS_PROXY, NO_PROXY)"},
		{paths.DefaultState + "/state.json", "identity, registration and generated credentials (0600)"},
		{paths.DefaultRuntime + "/agent.sock", "the local API socket pipeopsctl uses"},
		{paths.PackagedUnit, "the systemd unit"},
	}
	var b strings.Builder
	for _, r := range rows {
		fmt.Fprintf(&b, "*%s*\n: %s\n\n", strings.ReplaceAll(r[0], "*", `\*`), r[1])
	}
	return b.String()
}

type section struct{ title, body string }

func sections(s ...section) string {
	var b strings.Builder
	for _, x := range s {
		fmt.Fprintf(&b, "# %s\n\n%s\n", x.title, x.body)
	}
	return b.String()
}
