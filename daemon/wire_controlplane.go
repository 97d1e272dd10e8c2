package daemon

import (
	"context"
	"errors"
	"fmt"

	"github.com/pipeops/pipeops-vm-agent/internal/controlplane"
	"github.com/pipeops/pipeops-vm-agent/internal/logging"
)

// cpPart holds what the controlplane wiring builds. Owned by wire_controlplane.go.
// Later parts register their handlers, connect hooks and heartbeat
// contributors on d.cpPart.cp (Register, OnConnect, AddHeartbeatContributor).
type cpPart struct {
	cp *controlplane.Client
}

// wireControlPlane builds the control-plane link (protocol.md §2–5, §8):
// /health and the status snapshot read its state, and Run keeps it up.
func (d *Daemon) wireControlPlane() error {
	c, err := controlplane.New(controlplane.Options{
		Config:  d.cfg,
		AgentID: d.agentID,
		State:   d.state,
		Health:  d.health,
		Log:     d.log.With(logging.KeyComponent, "controlplane"),
		Metrics: d.reg,
		Cluster: kubeCluster{d},
	})
	if err != nil {
		return fmt.Errorf("control-plane link: %w", err)
	}
	d.cpPart.cp = c
	d.link = c
	d.fillers = append(d.fillers, c.FillStatus)
	d.addSubsystem("controlplane", c.Run)
	return nil
}

// kubeCluster adapts the Kubernetes part to controlplane.Cluster.
type kubeCluster struct{ d *Daemon }

var errKubeNotWired = errors.New("the Kubernetes client is not available yet")

func (k kubeCluster) Version(ctx context.Context) (string, error) { return "", errKubeNotWired }

func (k kubeCluster) Credentials(ctx context.Context) (string, string, error) {
	return "", "", errKubeNotWired
}

func (k kubeCluster) Telemetry(ctx context.Context) (controlplane.Telemetry, error) {
	return controlplane.Telemetry{}, errKubeNotWired
}
