package daemon

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/pipeops/pipeops-vm-agent/internal/config"
	"github.com/pipeops/pipeops-vm-agent/internal/dashboard"
	"github.com/pipeops/pipeops-vm-agent/internal/ha"
	"github.com/pipeops/pipeops-vm-agent/internal/logging"
	"github.com/pipeops/pipeops-vm-agent/internal/version"
)

// Command is one of pipeops-agent's commands, with its flags. Main parses
// the command line with these, usage is printed from them, and the man page
// pipeops-agent(8) is generated from them at build time (scripts/gendocs),
// so the three cannot disagree.
type Command struct {
	Name  string
	Usage string
	Flags []Flag
}

// Flag is one flag of a Command; Arg names its value in usage (FILE).
type Flag struct {
	Name, Arg, Usage string
}

// Commands are pipeops-agent's commands. A bare "pipeops-agent" only prints
// usage, so typing it never starts a second daemon.
var Commands = []Command{
	{Name: "run", Usage: "run the agent in the foreground (what the systemd unit calls)",
		Flags: []Flag{{Name: "config", Arg: "FILE", Usage: "read the configuration from FILE (default $PIPEOPS_CONFIG, then /etc/pipeops/agent.yaml)"}}},
	// remove-identity is run by "pipeopsctl uninstall --purge": pipeopsctl
	// may not link client-go, this binary does and discovers the cluster
	// as the agent did. It is no second daemon: it deletes and exits.
	{Name: "remove-identity", Usage: "delete the agent's ServiceAccount, token and RBAC from the cluster (stop the agent first; pipeopsctl uninstall --purge runs it)",
		Flags: []Flag{{Name: "config", Arg: "FILE", Usage: "read the configuration from FILE (default $PIPEOPS_CONFIG, then /etc/pipeops/agent.yaml)"}}},
	{Name: "version", Usage: "print the version"},
}

// Summary is pipeops-agent's one-line description.
const Summary = "connects this VM's Kubernetes cluster to PipeOps"

// Synopsis is "run [--config FILE]" for a command.
func (c Command) Synopsis() string {
	s := c.Name
	for _, f := range c.Flags {
		s += " [--" + f.Name
		if f.Arg != "" {
			s += " " + f.Arg
		}
		s += "]"
	}
	return s
}

// usage is printed by --help, a bare pipeops-agent and usage errors.
var usage = func() string {
	var b strings.Builder
	b.WriteString("pipeops-agent " + Summary + ".\n\nUsage:\n")
	for _, c := range Commands {
		fmt.Fprintf(&b, "  %-34s %s\n", "pipeops-agent "+c.Synopsis(), c.Usage)
	}
	for _, c := range Commands {
		if len(c.Flags) > 0 {
			fmt.Fprintf(&b, "\nFlags of %s:\n", c.Name)
		}
		for _, f := range c.Flags {
			fmt.Fprintf(&b, "  %-34s %s\n", strings.TrimSpace("--"+f.Name+" "+f.Arg), f.Usage)
		}
	}
	b.WriteString("\nManage the installed agent with pipeopsctl (status, logs, doctor, config).\n")
	return b.String()
}()

// Main is pipeops-agent's entry point; it returns the process exit code.
//
// It parses with the standard flag package on purpose: a CLI framework
// brings text/template, whose reflective method calls stop the linker from
// dropping unused methods, and that alone nearly doubles the binary and the
// pages the daemon keeps resident (issue 4's idle RSS).
func Main(args []string, stdout, stderr io.Writer) int {
	if len(args) < 2 {
		fmt.Fprint(stderr, usage)
		return ExitConfig
	}
	switch args[1] {
	case "run", "remove-identity":
		fs := flag.NewFlagSet("pipeops-agent "+args[1], flag.ContinueOnError)
		fs.SetOutput(stderr)
		fs.Usage = func() { fmt.Fprint(stderr, usage) }
		configPath := fs.String(Commands[0].Flags[0].Name, "", Commands[0].Flags[0].Usage)
		if err := fs.Parse(args[2:]); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return ExitOK
			}
			return ExitConfig
		}
		if fs.NArg() > 0 {
			fmt.Fprintf(stderr, "pipeops-agent %s: unexpected argument %q\n\n%s", args[1], fs.Arg(0), usage)
			return ExitConfig
		}
		if args[1] == "remove-identity" {
			return removeIdentity(*configPath, stdout, stderr)
		}
		return run(*configPath, stderr)
	case "version", "--version":
		fmt.Fprintln(stdout, "pipeops-agent", version.Get().String())
		return ExitOK
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return ExitOK
	}
	fmt.Fprintf(stderr, "pipeops-agent: unknown command %q\n\n%s", args[1], usage)
	return ExitConfig
}

// restartInPlace replaces this process with a fresh start of the same
// binary and arguments; it returns only when that fails.
func restartInPlace(log *slog.Logger) int {
	self, err := os.Executable()
	if err == nil {
		err = syscall.Exec(self, os.Args, os.Environ())
	}
	log.Error("could not restart in place; exiting so systemd starts the agent again", logging.KeyErr, err)
	return ExitFailure
}

// run loads config, builds the daemon and runs it until SIGINT or SIGTERM.
func run(configPath string, stderr io.Writer) int {
	cfg, warnings, err := config.Load(config.Options{Path: configPath})
	if err == nil {
		err = cfg.Validate()
	}
	if err != nil {
		// One clear block on stderr (the journal), then exit 2 so systemd does not loop.
		fmt.Fprintf(stderr, "pipeops-agent: invalid configuration:\n%s\nfix it, then run \"pipeopsctl config validate\" and \"systemctl restart pipeops-agent\"\n", err)
		return ExitConfig
	}
	level, _ := config.ParseLevel(cfg.Logging.Level)
	recent := dashboard.NewLogBuffer(0) // warn+ lines for the dashboard
	log := logging.New(logging.Options{Level: level, Format: cfg.Logging.Format, Out: stderr, Sink: recent.Add})
	slog.SetDefault(log) // only for third-party code; ours is injected
	for _, w := range warnings {
		log.Warn(w)
	}
	applyMemoryLimit(cfg, log)
	// Loud on purpose: each of these hands an attacker something (issue 13).
	for _, w := range cfg.SecurityWarnings() {
		log.Warn("INSECURE SETTING "+w.Field+": "+w.Message+"; "+w.Fix, logging.KeyField, w.Field)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	signal.Ignore(syscall.SIGPIPE) // a closed journal stream must fail writes, not kill us
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigs
		log.Info("signal received; stopping (send it again to exit at once)", "signal", s.String())
		cancel()
		<-sigs
		log.Error("second signal: exiting now")
		os.Exit(ExitFailure)
	}()

	d, err := New(cfg, log)
	if err != nil {
		log.Error("start agent", logging.KeyErr, err)
		return ExitFailure
	}
	d.SetLogBuffer(recent)
	err = d.Run(ctx)
	if errors.Is(err, ha.ErrTermEnded) && ctx.Err() == nil {
		// High availability: a leader whose term ended (lost lease or
		// step-down) starts over as a standby, so nothing of the old term
		// survives in memory (kube-controller-manager exits instead; a
		// restart in place keeps the PID systemd watches and its restart
		// counter out of it).
		log.Info("leadership ended; restarting in place as a standby")
		return restartInPlace(log)
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		log.Error("agent stopped with an error", logging.KeyErr, err)
		return ExitFailure
	}
	log.Info("stopped")
	return ExitOK
}
