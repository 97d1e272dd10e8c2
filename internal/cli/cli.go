// Package cli implements pipeopsctl, one subcommand per file. Every command
// gets its dependencies through env, so tests run them with stub systemctl
// and journalctl and a real local API socket. It must not link client-go,
// Helm, yamux, gorilla/websocket or go-systemd (tests/hygiene's
// TestPipeopsctlStaysSmall). The commands are listed once, in commands().
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/localclient"
)

// Exit codes of pipeopsctl (conventions §3).
const (
	ExitOK         = 0
	ExitError      = 1
	ExitUsage      = 2
	ExitNotRunning = 3 // status only, as with systemctl status
)

// exitError carries a specific exit code out of a command.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// withCode wraps err so Main exits with code.
func withCode(code int, err error) error { return &exitError{code: code, err: err} }

// commandError is an error pipeopsctl's own code returned: a command's
// Action or the app's Before (ownErrors wraps them all). Any other error
// from App.Run is urfave/cli rejecting the command line before a command
// ran (an unknown flag, command or help topic; a bad or missing flag value),
// and Main exits ExitUsage on it.
type commandError struct{ err error }

func (e *commandError) Error() string { return e.err.Error() }
func (e *commandError) Unwrap() error { return e.err }

// ownErrors marks the errors of the app's Before and of every command's
// Action and Before, down the whole tree, as commandErrors.
func ownErrors(app *cli.App) {
	app.Before = markErrors(app.Before)
	var walk func([]*cli.Command)
	walk = func(cmds []*cli.Command) {
		for _, c := range cmds {
			c.Action, c.Before = markErrors(c.Action), markErrors(c.Before)
			walk(c.Subcommands)
		}
	}
	walk(app.Commands)
}

func markErrors[F ~func(*cli.Context) error](f F) F {
	if f == nil {
		return nil // urfave/cli fills in its own (help) where it needs one
	}
	return func(c *cli.Context) error {
		if err := f(c); err != nil {
			return &commandError{err}
		}
		return nil
	}
}

// errSilent ends a command with a code after it already printed its output.
var errSilent = errors.New("")

// env is what every command needs; tests replace any field.
type env struct {
	stdout, stderr io.Writer
	stdin          io.Reader
	client         *localclient.Client
	// systemctl runs `systemctl args...` and returns its stdout.
	systemctl func(ctx context.Context, args ...string) (string, error)
	// lookPath finds host tools (journalctl).
	lookPath func(string) (string, error)
	// execve replaces the process (pipeopsctl logs); tests capture argv.
	execve func(argv0 string, argv []string, envv []string) error
	getenv func(string) string
	now    func() time.Time
}

func defaultEnv(stdout, stderr io.Writer) *env {
	return &env{
		stdout: stdout, stderr: stderr, stdin: os.Stdin, client: &localclient.Client{},
		systemctl: func(ctx context.Context, args ...string) (string, error) {
			out, err := exec.CommandContext(ctx, "systemctl", args...).Output()
			return string(out), err
		},
		lookPath: exec.LookPath,
		execve:   execve,
		getenv:   os.Getenv,
		now:      time.Now,
	}
}

// Main runs pipeopsctl and returns the exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return run(ctx, defaultEnv(stdout, stderr), args)
}

func run(ctx context.Context, e *env, args []string) int {
	app := newApp(e)
	err := app.RunContext(ctx, args)
	if err == nil {
		return ExitOK
	}
	var ee *exitError
	code := ExitUsage // not from our code: urfave/cli rejected the command line
	switch {
	case errors.As(err, &ee):
		code = ee.code
	case errors.As(err, new(*commandError)):
		code = ExitError
	}
	if msg := err.Error(); msg != "" {
		fmt.Fprintln(e.stderr, "pipeopsctl:", msg)
		var ae *apitype.Error
		if errors.As(err, &ae) && ae.Hint != "" {
			fmt.Fprintln(e.stderr, "hint:", ae.Hint)
		}
	}
	return code
}

// newApp is pipeopsctl's command tree. App (completion.go) builds the same tree
// for the generated man page and completion scripts.
func newApp(e *env) *cli.App {
	app := &cli.App{
		Name:  "pipeopsctl",
		Usage: "manage the PipeOps agent on this host",
		Description: "pipeopsctl inspects and manages pipeops-agent, the daemon that links this VM's Kubernetes cluster " +
			"to the PipeOps control plane. It talks to the agent over its local socket and to systemd; most commands need root.",
		Writer:    e.stdout,
		ErrWriter: e.stderr,
		Flags:     []cli.Flag{&cli.StringFlag{Name: "socket", Usage: "local API socket (default $PIPEOPS_SOCKET or /run/pipeops/agent.sock)"}},
		Before: func(c *cli.Context) error {
			if s := c.String("socket"); s != "" {
				e.client.Socket = s
			}
			return nil
		},
		// The hidden --generate-bash-completion flag that the scripts of
		// "pipeopsctl completion" call.
		EnableBashCompletion: true,
		ExitErrHandler:       func(*cli.Context, error) {}, // we map errors to codes below
		Commands:             commands(e),
	}
	ownErrors(app)
	return app
}

// commands is every pipeopsctl command, in the order --help, the man page
// and the completion scripts list them: what an operator reaches for first
// (is it working, what did it say, what is wrong), then day-to-day actions,
// then setup. A new command goes here, in its place, and nowhere else.
func commands(e *env) []*cli.Command {
	return []*cli.Command{
		newStatusCommand(e), newLogsCommand(e), newDoctorCommand(e),
		newServiceCommand(e, "start"), newServiceCommand(e, "stop"), newServiceCommand(e, "restart"),
		newMonitoringCommand(e), newHACommand(e), newConfigCommand(e),
		newInstallCommand(e), newUninstallCommand(e), newVersionCommand(e), newCompletionCommand(e),
	}
}
