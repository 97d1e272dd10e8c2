// Command pipeops-agent is the PipeOps node agent daemon. See package daemon.
package main

import (
	"os"

	"github.com/pipeops/pipeops-vm-agent/daemon"
)

func main() { os.Exit(daemon.Main(os.Args, os.Stdout, os.Stderr)) }
