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
	"syscall"

	"github.com/pipeops/pipeops-vm-agent/internal/config"
	"github.com/pipeops/pipeops-vm-agent/internal/dashboard"
	"github.com/pipeops/pipeops-vm-agent/internal/logging"
	"github.com/pipeops/pipeops-vm-agent/internal/version"
)

const usage = `pipeops-agent connects this VM's Kubernetes cluster to PipeOps.

Usage:
  pipeops-agent run [--config FILE]   run the agent in the foreground (what the systemd unit calls)
  pipeops-agent version               print the version

--config defaults to $PIPEOPS_CONFIG, then /etc/pipeops/agent.yaml.
Manage the installed agent with pipeopsctl (status, logs, config, doctor).
`

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
	case "run":
		fs := flag.NewFlagSet("pipeops-agent run", flag.ContinueOnError)
		fs.SetOutput(stderr)
		fs.Usage = func() { fmt.Fprint(stderr, usage) }
		configPath := fs.String("config", "", "config file (default $PIPEOPS_CONFIG or /etc/pipeops/agent.yaml)")
		if err := fs.Parse(args[2:]); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return ExitOK
			}
			return ExitConfig
		}
		if fs.NArg() > 0 {
			fmt.Fprintf(stderr, "pipeops-agent run: unexpected argument %q\n\n%s", fs.Arg(0), usage)
			return ExitConfig
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
	level, _ := logging.ParseLevel(cfg.Logging.Level)
	recent := dashboard.NewLogBuffer(0) // warn+ lines for the dashboard
	log := logging.New(logging.Options{Level: level, Format: cfg.Logging.Format, Out: stderr, Sink: recent.Add})
	slog.SetDefault(log) // only for third-party code; ours is injected
	for _, w := range warnings {
		log.Warn(w)
	}
	applyMemoryLimit(cfg, log)

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
	if err := d.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		log.Error("agent stopped with an error", logging.KeyErr, err)
		return ExitFailure
	}
	log.Info("stopped")
	return ExitOK
}
