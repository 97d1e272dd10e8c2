// Package routes runs the real pipeops-agent binary against a private test
// cluster and an in-process devplane, and checks route registration end to
// end: the cluster id from registration in the bodies, a full sync on every
// reconnect, heartbeat gateway_routes, `pipeopsctl status` and /metrics.
package routes

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/devplane"
	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

const token = "e2e-routes-token"

func create(t *testing.T, err error, what string) {
	t.Helper()
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("create %s: %v", what, err)
	}
}

// A private cluster: the agent watches every namespace and looks for the
// controller at pipeops-system/traefik, which other test packages sharing a
// cluster could also create.
func TestTheAgentRegistersManagedRoutesAndResyncsOnReconnect(t *testing.T) {
	p := kubetest.PrivateCluster(t, false)
	ctx := context.Background()
	cs := p.Client
	_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "pipeops-system"}}, metav1.CreateOptions{})
	create(t, err, "namespace pipeops-system")
	_, err = cs.CoreV1().Services("pipeops-system").Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "traefik"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "web", Port: 80}, {Name: "websecure", Port: 443}}}}, metav1.CreateOptions{})
	create(t, err, "Service traefik")
	_, err = cs.CoreV1().Services(p.Namespace).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "app"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 8080}}}}, metav1.CreateOptions{})
	create(t, err, "Service app")
	for name, managed := range map[string]bool{"shop": true, "other": false} {
		_, err = cs.NetworkingV1().Ingresses(p.Namespace).Create(ctx, ingress(name, managed), metav1.CreateOptions{})
		create(t, err, "ingress "+name)
	}

	dp := devplane.New(devplane.Config{Tokens: []string{token}})
	srv := httptest.NewServer(dp.Handler())
	defer srv.Close()
	a := startAgent(t, srv.URL, p.Kubeconfig)

	var clusterID string
	testbin.Eventually(t, 60*time.Second, "the agent to register", func() bool {
		if cl := dp.Clusters(); len(cl) == 1 {
			clusterID = cl[0].ID
		}
		return clusterID != ""
	})
	testbin.Eventually(t, 30*time.Second, "the managed route in the registry", func() bool {
		rs := dp.Routes(clusterID)
		return len(rs) == 1 && rs[0].Hostname == "shop.example.com"
	})
	r := dp.Routes(clusterID)[0]
	if r.Namespace != "pipeops-system" || r.ServiceName != "traefik" || r.ServicePort != 80 || r.ClusterUUID != clusterID {
		t.Fatalf("route %+v; want the cluster id and pipeops-system/traefik:80", r.RouteRegister)
	}
	testbin.Eventually(t, 30*time.Second, "a heartbeat with gateway_routes 1 and is_private", func() bool {
		c, ok := dp.Cluster(clusterID)
		hb := c.Heartbeat()
		return ok && hb.Metadata.GatewayRoutes == 1 && hb.Metadata.IsPrivate
	})
	testbin.Eventually(t, 30*time.Second, "pipeopsctl status to show the route", func() bool {
		st, err := a.status()
		return err == nil && st.Routes.Enabled && st.Routes.Count == 1 && st.Routes.RoutingMode == "tunnel" &&
			st.Routes.LastSyncResult == "ok" && !st.Routes.LastSync.IsZero() &&
			st.Routes.IngressController == "pipeops-system/traefik:80 (traefik)"
	})
	if n := a.metric("pipeops_agent_gateway_route_sync_attempts_total", `operation="sync"`); n < 1 {
		t.Fatalf("sync attempts metric = %v; want ≥ 1", n)
	}

	// A reconnection (here: the control plane drops every session) brings a
	// full sync, which restores routes a restarted control plane lost.
	before, _ := dp.RouteCluster(clusterID)
	dp.ResetRoutes()
	dp.DropAll()
	testbin.Eventually(t, 30*time.Second, "a full sync after the reconnect", func() bool {
		c, _ := dp.RouteCluster(clusterID)
		return c.Syncs >= 1 && len(c.Routes) == 1
	})
	t.Logf("syncs before the drop: %d; routes restored after the reconnect", before.Syncs)
}

func ingress(name string, managed bool) *networkingv1.Ingress {
	ing := &networkingv1.Ingress{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if managed {
		ing.Labels = map[string]string{"pipeops.io/managed": "true"}
	}
	prefix := networkingv1.PathTypePrefix
	ing.Spec.Rules = []networkingv1.IngressRule{{Host: name + ".example.com", IngressRuleValue: networkingv1.IngressRuleValue{
		HTTP: &networkingv1.HTTPIngressRuleValue{Paths: []networkingv1.HTTPIngressPath{{Path: "/", PathType: &prefix,
			Backend: networkingv1.IngressBackend{Service: &networkingv1.IngressServiceBackend{Name: "app",
				Port: networkingv1.ServiceBackendPort{Name: "http"}}}}}}}}}
	return ing
}

type agentProc struct {
	t      *testing.T
	port   int
	socket string
}

func startAgent(t *testing.T, apiURL, kubeconfig string) *agentProc {
	t.Helper()
	f := testbin.WriteAgentConfig(t, testbin.ShortTempDir(t), testbin.AgentConfig{Name: "e2e-routes", APIURL: apiURL, Kubeconfig: kubeconfig})
	a := &agentProc{t: t, port: f.Port, socket: f.Socket}
	testbin.Start(t, testbin.Build(t, "pipeops-agent"), testbin.AgentEnv(token), "run", "--config", f.Config)
	return a
}

func (a *agentProc) status() (apitype.StatusResponse, error) {
	var st apitype.StatusResponse
	out, err := exec.Command(testbin.Build(a.t, "pipeopsctl"), "--socket", a.socket, "status", "--json").Output()
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal(out, &st)
}

// metric reads one sample from /metrics; -1 when absent.
func (a *agentProc) metric(name, label string) float64 {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", a.port))
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, name+"{") && strings.Contains(line, label) {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			return v
		}
	}
	return -1
}
