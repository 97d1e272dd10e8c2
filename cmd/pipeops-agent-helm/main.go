// Command pipeops-agent-helm is pipeops-agent's Helm worker: the agent runs
// "pipeops-agent-helm worker" for each monitoring round (package monitor),
// so that neither the daemon nor pipeopsctl links the Helm SDK. It reads
// one request, with the admin credentials, on stdin and writes its progress
// and result as NDJSON on stdout. It is not meant to be run by hand.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/pipeops/pipeops-vm-agent/internal/charts"
	"github.com/pipeops/pipeops-vm-agent/internal/version"
)

const usage = `pipeops-agent-helm is pipeops-agent's Helm worker; the agent runs it for
each monitoring round. Manage the monitoring stack with "pipeopsctl monitoring".

Usage:
  pipeops-agent-helm worker    one round: request on stdin, NDJSON on stdout
  pipeops-agent-helm version   print the version
`

func main() {
	if len(os.Args) != 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	switch os.Args[1] {
	case "worker":
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
		err := charts.Worker(ctx, os.Stdin, os.Stdout, os.Stderr)
		stop()
		if err != nil {
			fmt.Fprintln(os.Stderr, "pipeops-agent-helm:", err)
			os.Exit(1)
		}
	case "version", "--version":
		fmt.Println("pipeops-agent-helm", version.Get().String())
	default:
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
}
