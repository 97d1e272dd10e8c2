package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/pipeops/pipeops-vm-agent/internal/config"
	"github.com/pipeops/pipeops-vm-agent/internal/dashboard"
	"github.com/pipeops/pipeops-vm-agent/internal/logging"
	"github.com/pipeops/pipeops-vm-agent/internal/version"
)

// Main is pipeops-agent's entry point; it returns the process exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	code := ExitOK
	app := &cli.App{
		Name:      "pipeops-agent",
		Usage:     "connect this VM's Kubernetes cluster to PipeOps",
		Writer:    stdout,
		ErrWriter: stderr,
		// urfave/cli would os.Exit on ExitCoder errors; we map errors ourselves.
		ExitErrHandler: func(*cli.Context, error) {},
		Commands: []*cli.Command{
			{
				Name:  "run",
				Usage: "run the agent in the foreground (what the systemd unit calls)",
				Flags: []cli.Flag{&cli.StringFlag{Name: "config", Usage: "config file (default $PIPEOPS_CONFIG or /etc/pipeops/agent.yaml)"}},
				Action: func(c *cli.Context) error {
					code = run(c.String("config"), stderr)
					return nil
				},
			},
			{
				Name:  "version",
				Usage: "print the version",
				Action: func(c *cli.Context) error {
					fmt.Fprintln(stdout, "pipeops-agent", version.Get().String())
					return nil
				},
			},
		},
	}
	if err := app.Run(args); err != nil {
		fmt.Fprintln(stderr, "pipeops-agent:", err)
		return ExitConfig
	}
	return code
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
