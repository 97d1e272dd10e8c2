package charts

import (
	"context"
	"io"

	"k8s.io/client-go/rest"

	"github.com/pipeops/pipeops-vm-agent/internal/config"
	"github.com/pipeops/pipeops-vm-agent/internal/logging"
	"github.com/pipeops/pipeops-vm-agent/internal/monitor"
)

// Worker is the process the daemon's monitor.Exec starts for each round or
// uninstall ("pipeops-agent-helm worker"): the request on in, progress
// and the result as NDJSON on out, JSON log lines on logOut.
func Worker(ctx context.Context, in io.Reader, out, logOut io.Writer) error {
	return monitor.ServeWorker(ctx, in, out, func(req monitor.WorkerRequest, kube *rest.Config) (monitor.Backend, error) {
		level, err := config.ParseLevel(req.LogLevel)
		if err != nil {
			level = 0 // info
		}
		notJournal := false
		log := logging.New(logging.Options{Level: level, Format: logging.FormatJSON, Out: logOut, Journal: &notJournal})
		return New(Options{Settings: req.Settings, Log: log.With(logging.KeyComponent, "charts"),
			RESTConfig: func(context.Context) (*rest.Config, error) { return kube, nil }})
	})
}
