// Command pipeopsctl manages the PipeOps agent on this host. See package cli.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/pipeops/pipeops-vm-agent/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
