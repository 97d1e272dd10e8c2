package daemon

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/pipeops/pipeops-vm-agent/internal/config"
	"github.com/pipeops/pipeops-vm-agent/internal/kube"
)

// removeIdentity is "pipeops-agent remove-identity": with the same config
// and kubeconfig discovery as "run", it deletes the agent's ServiceAccount,
// its token Secrets and every RBAC object granting it something
// (kube.RemoveIdentity), so the token the control plane holds stops working
// at once. pipeopsctl uninstall --purge runs it after stopping the service:
// pipeopsctl may not link client-go, and this binary already does, with the
// discovery the agent used. It prints one line per deleted object.
func removeIdentity(configPath string, stdout, stderr io.Writer) int {
	cfg, _, err := config.Load(config.Options{Path: configPath})
	if err != nil {
		fmt.Fprintf(stderr, "pipeops-agent remove-identity: %v\n", err)
		return ExitConfig
	}
	admin, src, err := kube.Discover(kube.Candidates(cfg.Kubernetes, os.Getenv, kube.WellKnownKubeconfigs))
	if err != nil {
		fmt.Fprintf(stderr, "pipeops-agent remove-identity: %v\n", err)
		return ExitFailure
	}
	cs, err := kubernetes.NewForConfig(admin)
	if err != nil {
		fmt.Fprintf(stderr, "pipeops-agent remove-identity: %v\n", err)
		return ExitFailure
	}
	monitoringNS := ""
	if cfg.Monitoring.Enabled {
		monitoringNS = cfg.Monitoring.Namespace
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	removed, err := kube.RemoveIdentity(ctx, cs, kube.NamesFor(cfg.Kubernetes.Namespace, monitoringNS))
	for _, r := range removed {
		fmt.Fprintln(stdout, "removed", r)
	}
	if err != nil {
		fmt.Fprintf(stderr, "pipeops-agent remove-identity: with the kubeconfig %s (%s): %v\n", src.Path, admin.Host, err)
		return ExitFailure
	}
	if len(removed) == 0 {
		fmt.Fprintf(stdout, "nothing to remove: no ServiceAccount %s/%s in the cluster at %s\n", cfg.Kubernetes.Namespace, kube.ServiceAccountName, admin.Host)
	}
	return ExitOK
}
