package daemon

import (
	"context"
	"fmt"

	"github.com/pipeops/pipeops-vm-agent/internal/controlplane"
	"github.com/pipeops/pipeops-vm-agent/internal/kube"
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
	loc, err := d.newLocality()
	if err != nil {
		return fmt.Errorf("control-plane link: %w", err)
	}
	c, err := controlplane.New(controlplane.Options{
		Config:  d.cfg,
		AgentID: d.agentID,
		State:   d.state,
		Health:  d.health,
		Log:     d.log.With(logging.KeyComponent, "controlplane"),
		Metrics: d.reg,
		Cluster: kubeCluster{d.kubePart.mgr},

		Locality: loc, // wire_locality.go
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

// kubeCluster adapts *kube.Manager to controlplane.Cluster (and
// CredentialsWatcher, so rotated tokens are registered at once).
type kubeCluster struct{ m *kube.Manager }

func (k kubeCluster) Version(ctx context.Context) (string, error) { return k.m.Version(ctx) }

func (k kubeCluster) Credentials(ctx context.Context) (string, string, error) {
	return k.m.Credentials(ctx)
}

func (k kubeCluster) CredentialsChanged() <-chan struct{} { return k.m.CredentialsChanged() }

func (k kubeCluster) Telemetry(ctx context.Context) (controlplane.Telemetry, error) {
	t, err := k.m.Telemetry(ctx)
	if err != nil {
		return controlplane.Telemetry{}, err
	}
	return controlplane.Telemetry{K8sVersion: t.K8sVersion, Nodes: t.Nodes, Pods: t.Pods,
		CPUUsage: t.CPUUsage, MemoryUsage: t.MemoryUsage}, nil
}
