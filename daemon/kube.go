package daemon

import (
	"context"

	"github.com/pipeops/pipeops-vm-agent/internal/config"
	"github.com/pipeops/pipeops-vm-agent/internal/controlplane"
	"github.com/pipeops/pipeops-vm-agent/internal/health"
	"github.com/pipeops/pipeops-vm-agent/internal/kube"
	"github.com/pipeops/pipeops-vm-agent/internal/state"
)

// kubeOptions are the Kubernetes manager's settings beyond cfg.Kubernetes:
// health, the heartbeat period its telemetry follows, the token's store, the
// monitoring namespace and the namespaces where the agent's ServiceAccount
// may only read.
func kubeOptions(cfg *config.Config, hl *health.Tracker, st *state.Store) []kube.Option {
	opts := []kube.Option{kube.WithHealth(hl), kube.WithHeartbeatInterval(cfg.Agent.HeartbeatInterval.Std()),
		kube.WithProtectedNamespaces(cfg.Kubernetes.ProtectedNamespaces...), kube.WithStore(kubeStore{st})}
	if mc := cfg.Monitoring; mc.Enabled {
		ns := mc.Namespace
		if ns == "" {
			ns = kube.DefaultMonitoringNS
		}
		opts = append(opts, kube.WithMonitoringNamespace(ns))
		// The stack's releases run privileged ServiceAccounts (operators,
		// Traefik): a pod created next to them could borrow their rights.
		for _, c := range mc.Components.Each() {
			if c.Enabled && c.Namespace != "" {
				opts = append(opts, kube.WithProtectedNamespaces(c.Namespace))
			}
		}
	}
	if cfg.HA.Enabled {
		opts = append(opts, kube.WithHA()) // the Role for the Leases and the identity Secret (ha.go)
	}
	return opts
}

// kubeStore keeps the agent's Kubernetes token in the state file, so a
// restart reuses it (and resumes without registering) instead of minting a
// new one.
type kubeStore struct{ st *state.Store }

func (k kubeStore) LoadCredentials() kube.Saved {
	s := k.st.Get()
	return kube.Saved{Server: s.KubeServer, Token: s.ClusterToken, CAData: s.ClusterCAData, Source: s.TokenSource,
		Secret: s.TokenSecret, Issued: s.TokenIssuedAt, Expires: s.TokenExpiresAt, TokenMode: s.TokenMode}
}

func (k kubeStore) SaveCredentials(v kube.Saved) error {
	return k.st.Update(func(s *state.State) error {
		s.KubeServer, s.ClusterToken, s.ClusterCAData, s.TokenSource = v.Server, v.Token, v.CAData, v.Source
		s.TokenSecret, s.TokenIssuedAt, s.TokenExpiresAt, s.TokenMode = v.Secret, v.Issued, v.Expires, v.TokenMode
		return nil
	})
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
