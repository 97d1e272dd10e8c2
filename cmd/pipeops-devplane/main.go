// Command pipeops-devplane is the reference control plane: the controller
// and gateway WebSockets, the admin API and fault injection of package
// devplane, as one process for demos and end-to-end tests.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/pipeops/pipeops-vm-agent/internal/devplane"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := devplane.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
