package daemon

import (
	"context"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/config"
	"github.com/pipeops/pipeops-vm-agent/internal/health"
	"github.com/pipeops/pipeops-vm-agent/internal/kube"
	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
)

func TestTheDaemonReportsTheClusterItReachesInItsStatus(t *testing.T) {
	env := kubetest.Cluster(t)
	t.Cleanup(func() { // the agent names its ClusterRole after its (non-default) namespace
		ctx := context.Background()
		name := kube.ClusterRoleName + "-" + env.Namespace
		env.Client.RbacV1().ClusterRoleBindings().Delete(ctx, name, metav1.DeleteOptions{})
		env.Client.RbacV1().ClusterRoles().Delete(ctx, name, metav1.DeleteOptions{})
	})
	c := runDaemon(t, func(c *config.Config) {
		c.Kubernetes.Kubeconfig = env.Kubeconfig
		c.Kubernetes.Namespace = env.Namespace
	})
	var st *apitype.StatusResponse
	deadline := time.Now().Add(60 * time.Second)
	for {
		var err error
		st, err = c.Status(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		k := st.Kubernetes
		if k.Reachable && strings.HasPrefix(k.Version, "v1.") && k.Nodes >= 1 && k.CPUSource != "" && kubeOK(st) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status never showed a reachable cluster with telemetry: %+v, conditions %+v", k, st.Conditions)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if st.Kubernetes.Kubeconfig != env.Kubeconfig || st.Kubernetes.Server != env.Config.Host {
		t.Fatalf("status names kubeconfig %q server %q; want %q %q", st.Kubernetes.Kubeconfig, st.Kubernetes.Server, env.Kubeconfig, env.Config.Host)
	}
}

func kubeOK(st *apitype.StatusResponse) bool {
	for _, c := range st.Conditions {
		if c.Name == health.Kubernetes {
			return c.OK
		}
	}
	return false
}
