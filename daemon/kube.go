package daemon

import (
	"context"
	"os"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/kube"
	"github.com/pipeops/pipeops-vm-agent/internal/logging"
	"github.com/pipeops/pipeops-vm-agent/internal/state"
)

// kubePart holds what the kube wiring builds. Owned by wire_kube.go.
// Later parts read d.kubePart.mgr: AdminConfig (Helm only), ProxyConfig and
// Clientset/WaitClientset (ServiceAccount identity), Version, Credentials,
// CredentialsChanged and Telemetry.
type kubePart struct {
	mgr *kube.Manager
}

// wireKube builds the Kubernetes manager: kubeconfig discovery, the agent's
// own ServiceAccount and RBAC, its token, the API probe behind the
// "kubernetes" health condition, and heartbeat telemetry.
func (d *Daemon) wireKube() error {
	opts := []kube.Option{kube.WithHealth(d.health), kube.WithHeartbeatInterval(d.cfg.Agent.HeartbeatInterval.Std()),
		kube.WithProtectedNamespaces(d.cfg.Kubernetes.ProtectedNamespaces...), kube.WithStore(kubeStore{d.state})}
	if mc := d.cfg.Monitoring; mc.Enabled {
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
	d.kubePart.mgr = kube.New(d.cfg.Kubernetes, os.Getenv, d.log.With(logging.KeyComponent, "kube"), d.reg, opts...)
	d.addSubsystem("kubernetes", d.kubePart.mgr.Run)
	d.fillers = append(d.fillers, func(ctx context.Context, st *apitype.StatusResponse) {
		st.Kubernetes = d.kubePart.mgr.Status(ctx)
	})
	return nil
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
