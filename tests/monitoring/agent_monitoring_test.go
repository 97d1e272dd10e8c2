// Package monitoring runs the real pipeops-agent and pipeopsctl binaries
// against a private FULL test cluster (kwok makes pods Ready) and an
// in-process devplane, and checks the monitoring stack end to end: the
// heartbeat fields the control plane sees, Grafana's root_url with the
// registered cluster id, the pinned prometheus-operator CRDs, cert-manager
// with its ClusterIssuers, the CoreDNS rewrite in k3s's coredns-custom, a
// restart that changes no release and no credential, and
// `pipeopsctl monitoring uninstall|install`.
package monitoring

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/devplane"
	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
	"github.com/pipeops/pipeops-vm-agent/internal/state"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

const token = "e2e-monitoring-token"

func charts(name string) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "internal", "charts", "testdata", "charts", name)
}

// agent is one pipeops-agent process; restart keeps its state directory.
type agent struct {
	t          *testing.T
	dir        string
	socket     string
	config     string
	out        *testbin.Output // every run's output
	proc       *testbin.Proc   // the current run
	stateDir   string
	kubeconfig string
}

func newAgent(t *testing.T, apiURL, kubeconfig, ns string) *agent {
	t.Helper()
	dir := testbin.ShortTempDir(t)
	extra := fmt.Sprintf(`gateway:
  enabled: false
monitoring:
  enabled: true
  namespace: %s
  ready_timeout: 60s
  cache_dir: %s
  components:
    metrics_server: {namespace: %s, chart: %s, repo: ""}
    vpa: {enabled: false}
    traefik: {enabled: false}
    cert_manager: {namespace: %s, chart: %s, repo: ""}
    prometheus: {chart: %s, repo: ""}
    loki: {chart: %s, repo: ""}
`, ns, filepath.Join(dir, "cache"), ns, charts("metrics-server"), ns, charts("cert-manager"), charts("kube-prometheus-stack"), charts("loki-stack"))
	f := testbin.WriteAgentConfig(t, dir, testbin.AgentConfig{Name: "e2e-monitoring", APIURL: apiURL, Kubeconfig: kubeconfig,
		Kubernetes: "  cluster_domain: corp.internal\n", Extra: extra})
	a := &agent{t: t, dir: dir, socket: f.Socket, config: f.Config, stateDir: f.StateDir, out: &testbin.Output{}, kubeconfig: kubeconfig}
	t.Cleanup(func() { // after every run's stop
		if t.Failed() {
			t.Logf("agent output:\n%s", a.out.String())
		}
	})
	a.start()
	return a
}

func (a *agent) start() {
	a.t.Helper()
	testbin.Build(a.t, "pipeops-agent-helm") // the Helm worker, beside the agent as every install puts it
	a.proc = testbin.StartTo(a.t, a.out, testbin.Build(a.t, "pipeops-agent"),
		testbin.AgentEnv(token), "run", "--config", a.config)
}

// stop ends the current run: SIGTERM, then SIGKILL after testbin.StopTimeout.
func (a *agent) stop() { a.proc.Stop() }

func (a *agent) ctl(args ...string) (string, error) {
	cmd := exec.Command(testbin.Build(a.t, "pipeopsctl"), append([]string{"--socket", a.socket}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func (a *agent) monitoring() (apitype.MonitoringStatus, error) {
	var st apitype.MonitoringStatus
	out, err := a.ctl("monitoring", "status", "--json")
	if err != nil {
		return st, fmt.Errorf("%v: %s", err, out)
	}
	return st, json.Unmarshal([]byte(out), &st)
}

// allReady: metrics-server, the CoreDNS rewrite, cert-manager,
// kube-prometheus-stack and Loki ready; VPA and Traefik off.
func allReady(st apitype.MonitoringStatus) bool {
	got := map[string]string{}
	for _, r := range st.Releases {
		got[r.Component] = r.State
	}
	want := map[string]string{"metrics_server": "ready", "coredns": "ready", "cert_manager": "ready", "prometheus": "ready",
		"loki": "ready", "vpa": "disabled", "traefik": "disabled"}
	return fmt.Sprint(got) == fmt.Sprint(want)
}

// k3sCorefile is k3s's packaged Corefile: it imports coredns-custom.
const k3sCorefile = `.:53 {
    errors
    health
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
      pods insecure
      fallthrough in-addr.arpa ip6.arpa
    }
    forward . /etc/resolv.conf
    cache 30
    loop
    reload
    loadbalance
    import /etc/coredns/custom/*.override
}
import /etc/coredns/custom/*.server
`

func TestTheAgentInstallsTheStackAndTheControlPlaneSeesItsEndpoints(t *testing.T) {
	// A private cluster: the agent bootstraps cluster-wide RBAC, which other
	// packages' agents sharing a cluster would also reconcile.
	p := kubetest.PrivateCluster(t, true)
	ns := p.Namespace
	cms := p.Client.CoreV1().ConfigMaps("kube-system")
	if _, err := cms.Create(context.Background(), &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "coredns"},
		Data: map[string]string{"Corefile": k3sCorefile}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	dp := devplane.New(devplane.Config{Tokens: []string{token}})
	srv := httptest.NewServer(dp.Handler())
	defer srv.Close()
	a := newAgent(t, srv.URL, p.Kubeconfig, ns)

	var clusterID string
	testbin.Eventually(t, 60*time.Second, "the agent to register", func() bool {
		if cl := dp.Clusters(); len(cl) == 1 {
			clusterID = cl[0].ID
		}
		return clusterID != ""
	})
	var hb protocol.Heartbeat
	testbin.Eventually(t, 90*time.Second, "a heartbeat with the monitoring endpoints", func() bool {
		c, _ := dp.Cluster(clusterID)
		hb = c.Heartbeat()
		return hb.GrafanaURL != "" && hb.PrometheusURL != "" && hb.LokiURL != ""
	})
	want := map[string]string{
		hb.PrometheusURL: "http://kube-prometheus-stack-prometheus." + ns + ".svc.corp.internal:9090",
		hb.LokiURL:       "http://loki." + ns + ".svc.corp.internal:3100",
		hb.GrafanaURL:    "http://kube-prometheus-stack-grafana." + ns + ".svc.corp.internal:3000",
	}
	for got, w := range want {
		if got != w {
			t.Errorf("heartbeat URL %q; want %q", got, w)
		}
	}
	st, err := state.Open(a.stateDir, nil)
	if err != nil {
		t.Fatal(err)
	}
	password := st.Get().Secrets["grafana_admin_password"]
	if hb.GrafanaUsername != "admin" || password == "" || hb.GrafanaPassword != password {
		t.Fatalf("heartbeat grafana credentials do not match the persisted password")
	}
	var mon apitype.MonitoringStatus
	testbin.Eventually(t, 60*time.Second, "every component ready", func() bool {
		mon, err = a.monitoring()
		return err == nil && allReady(mon)
	}, func() string { return fmt.Sprintf("%+v, %v", mon, err) })
	// The k3s form of the CoreDNS rewrite; k3s's own Corefile untouched.
	if custom, err := cms.Get(context.Background(), "coredns-custom", metav1.GetOptions{}); err != nil ||
		!strings.Contains(custom.Data["pipeops.override"], `name regex (.+)\.pipeops\.internal\.$ {1}.corp.internal.`) {
		t.Errorf("coredns-custom = %v, %v; want the pipeops.override rewrite to corp.internal", custom, err)
	}
	// The pinned prometheus-operator CRDs, and the ClusterIssuers.
	if crd, err := apiextensionsCRD(p, "servicemonitors.monitoring.coreos.com"); err != nil || crd["operator.prometheus.io/version"] != "0.70.0" {
		t.Errorf("ServiceMonitor CRD annotations = %v, %v; want prometheus-operator 0.70.0", crd, err)
	}
	if out := p.Kubectl(t, "get", "clusterissuers.cert-manager.io", "-o", "name"); !strings.Contains(out, "clusterissuer.cert-manager.io/letsencrypt-prod\n") ||
		!strings.Contains(out, "clusterissuer.cert-manager.io/letsencrypt-production\n") {
		t.Errorf("kubectl get clusterissuers:\n%s", out)
	}
	sec, err := p.Client.CoreV1().Secrets(ns).Get(context.Background(), "kube-prometheus-stack-grafana-config", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ini := string(sec.Data["grafana.ini"]); !strings.Contains(ini, "/api/v1/clusters/agent/"+clusterID+"/proxy/") {
		t.Errorf("grafana.ini = %q; want root_url with the registered cluster id %s", ini, clusterID)
	}
	var status apitype.StatusResponse
	if out, err := a.ctl("status", "--json"); err == nil {
		_ = json.Unmarshal([]byte(out), &status)
	}
	fwd := map[string]string{}
	for _, f := range status.Tunnel.Forwards {
		fwd[f.Name] = f.LocalAddr
	}
	if fwd["grafana"] != "kube-prometheus-stack-grafana."+ns+":3000" || fwd["prometheus"] == "" || fwd["loki"] == "" {
		t.Errorf("tunnel forwards = %v; want grafana, prometheus and loki", fwd)
	}

	// Restart: same state, no Helm action (every release stays at revision 1),
	// same credentials in the heartbeat.
	a.stop()
	restarted := time.Now()
	a.start()
	testbin.Eventually(t, 60*time.Second, "a heartbeat with endpoints after the restart", func() bool {
		c, _ := dp.Cluster(clusterID)
		hb = c.Heartbeat()
		return c.LastHeartbeatAt.After(restarted) && hb.GrafanaURL != ""
	})
	if hb.GrafanaPassword != password {
		t.Errorf("grafana password changed across a restart")
	}
	mon, _ = a.monitoring()
	for _, r := range mon.Releases {
		if r.Chart != "" && r.State == apitype.ReleaseReady && r.Revision != 1 {
			t.Errorf("release %s at revision %d after a restart; want 1 (no Helm call)", r.Name, r.Revision)
		}
	}
	if n := strings.Count(a.out.String(), `"msg":"release installed"`); n != 4 {
		t.Errorf("the agent logged %d installs over both runs; want 4 (none after the restart)", n)
	}

	// Uninstall, then install again through pipeopsctl.
	if out, err := a.ctl("monitoring", "uninstall", "--yes"); err != nil || !strings.Contains(out, "monitoring stack uninstalled") {
		t.Fatalf("pipeopsctl monitoring uninstall: %v\n%s", err, out)
	}
	if list, _ := p.Client.CoreV1().Secrets(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "owner=helm"}); len(list.Items) != 0 {
		t.Errorf("%d Helm release records left after uninstall", len(list.Items))
	}
	if _, err := cms.Get(context.Background(), "coredns-custom", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("coredns-custom after monitoring uninstall: %v; want the agent's ConfigMap gone", err)
	}
	if cm, err := cms.Get(context.Background(), "coredns", metav1.GetOptions{}); err != nil || cm.Data["Corefile"] != k3sCorefile {
		t.Errorf("k3s's Corefile changed: %v", err)
	}
	if crd, err := apiextensionsCRD(p, "servicemonitors.monitoring.coreos.com"); err != nil || crd == nil {
		t.Errorf("the ServiceMonitor CRD after monitoring uninstall: %v; want it kept", err)
	}
	uninstalled := time.Now()
	testbin.Eventually(t, 30*time.Second, "a heartbeat without monitoring fields", func() bool {
		c, _ := dp.Cluster(clusterID)
		return c.LastHeartbeatAt.After(uninstalled) && c.Heartbeat().GrafanaURL == ""
	})
	status = apitype.StatusResponse{}
	if out, err := a.ctl("status", "--json"); err != nil || json.Unmarshal([]byte(out), &status) != nil {
		t.Fatalf("pipeopsctl status --json: %v\n%s", err, out)
	}
	for _, f := range status.Tunnel.Forwards {
		if f.Name == "grafana" || f.Name == "prometheus" || f.Name == "loki" {
			t.Errorf("tunnel forward %s → %s still offered after uninstall", f.Name, f.LocalAddr)
		}
	}
	out, err := a.ctl("monitoring", "install")
	if err != nil || !strings.Contains(out, "monitoring stack ready: 5 components, 2 disabled") || !strings.Contains(out, "kube-prometheus-stack    ready") {
		t.Fatalf("pipeopsctl monitoring install: %v\n%s", err, out)
	}
	t.Logf("pipeopsctl monitoring install:\n%s", out)
}

// apiextensionsCRD returns a CRD's annotations (nil when it is absent).
func apiextensionsCRD(p *kubetest.Private, name string) (map[string]string, error) {
	d, err := dynamic.NewForConfig(p.Config)
	if err != nil {
		return nil, err
	}
	u, err := d.Resource(schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}).
		Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	return u.GetAnnotations(), nil
}
