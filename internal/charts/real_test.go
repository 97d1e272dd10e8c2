//go:build realcharts

package charts

import (
	"os"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chartutil"
)

// EnvRealCharts names a folder holding the real, pinned charts (made with
// `helm pull <repo>/<chart> --version X` on a machine with internet).
const EnvRealCharts = "PIPEOPS_REAL_CHARTS_DIR"

// TestRealPinnedChartsRenderWithTheAgentsValues templates each real chart
// with the values the agent would install, and checks what the agent relies
// on: the Grafana root_url and port, the Service names behind the advertised
// URLs, metrics-server's --kubelet-insecure-tls, retention and volumes.
//
// The real charts cannot be downloaded here (CI reaches only the Go module
// proxy, Debian and npm), so this test is opt-in, behind the realcharts build
// tag, and fails when the charts are missing instead of skipping:
//
//	PIPEOPS_REAL_CHARTS_DIR=/path/to/charts go test -tags realcharts -run RealPinned ./internal/charts
func TestRealPinnedChartsRenderWithTheAgentsValues(t *testing.T) {
	dir := os.Getenv(EnvRealCharts)
	if dir == "" {
		t.Fatalf("set %s to a folder with "+
			"kube-prometheus-stack-<v>.tgz, loki-stack-<v>.tgz, metrics-server-<v>.tgz, traefik-33.1.0.tgz, cert-manager-v1.13.3.tgz and vpa-<v>.tgz (helm pull)", EnvRealCharts)
	}
	m := unitManager(t, func(o *Options) {
		o.ChartsDir = dir
		o.APIURL = "https://api.pipeops.io"
		o.Components = []Component{
			{Name: "metrics_server", Release: "metrics-server", Namespace: "kube-system", Chart: "metrics-server"},
			{Name: "vpa", Release: "vpa", Namespace: "pipeops-system", Chart: "vpa"},
			{Name: "traefik", Release: "traefik", Namespace: "pipeops-system", Chart: "traefik", Version: "33.1.0"},
			{Name: "cert_manager", Release: "cert-manager", Namespace: "cert-manager", Chart: "cert-manager", Version: "v1.13.3"},
			{Name: "prometheus", Release: "kube-prometheus-stack", Namespace: "pipeops-monitoring", Chart: "kube-prometheus-stack"},
			{Name: "loki", Release: "loki", Namespace: "pipeops-monitoring", Chart: "loki-stack"},
		}
	})
	f := facts{Profile: ProfileMedium, ClusterID: "c-1", StorageClass: "local-path"}
	want := map[string][]string{
		"metrics_server": {"--kubelet-insecure-tls"},
		"traefik":        {"type: LoadBalancer", "kind: IngressClass"},
		// installCRDs renders the CRDs; the webhook the ClusterIssuers wait for.
		"cert_manager": {"name: clusterissuers.cert-manager.io", "name: cert-manager-webhook", "app.kubernetes.io/name: cert-manager"},
		"prometheus": {
			"root_url = https://api.pipeops.io/api/v1/clusters/agent/c-1/proxy/api/v1/namespaces/pipeops-monitoring/services/http:kube-prometheus-stack-grafana:3000/proxy/",
			"serve_from_sub_path = true", "retention: \"15d\"", "storage: 20Gi", "http://loki.pipeops-monitoring.svc.k8s.example:3100",
		},
		"loki": {"storage: \"10Gi\""},
	}
	for i := range m.opts.Components {
		c := &m.opts.Components[i]
		t.Run(c.Name, func(t *testing.T) {
			src, err := m.resolveSource(c)
			if err != nil {
				t.Fatalf("chart missing from %s: %v", dir, err)
			}
			ch, err := m.loadChart(nil, src)
			if err != nil {
				t.Fatal(err)
			}
			vals, err := m.desiredValues(c, f)
			if err != nil {
				t.Fatal(err)
			}
			in := action.NewInstall(&action.Configuration{Log: t.Logf})
			in.ReleaseName, in.Namespace = c.Release, c.Namespace
			in.DryRun, in.ClientOnly, in.Replace = true, true, true
			in.KubeVersion = &chartutil.KubeVersion{Version: "v1.36.3", Major: "1", Minor: "36"}
			rel, err := in.Run(ch, vals)
			if err != nil {
				t.Fatalf("template %s %s: %v", ch.Metadata.Name, ch.Metadata.Version, err)
			}
			t.Logf("%s %s rendered %d bytes", ch.Metadata.Name, ch.Metadata.Version, len(rel.Manifest))
			for _, w := range want[c.Name] {
				if !strings.Contains(rel.Manifest, w) {
					t.Errorf("%s %s manifest lacks %q", ch.Metadata.Name, ch.Metadata.Version, w)
				}
			}
			for _, ep := range map[string][]string{"prometheus": {"prometheus", "grafana"}, "loki": {"loki"}}[c.Name] {
				e, ok := m.endpointFor(ep, c, rel.Manifest)
				if !ok {
					t.Errorf("no %s Service found in the manifest for the advertised URL", ep)
					continue
				}
				t.Logf("%s endpoint: %s", ep, e.URL)
			}
		})
	}
}
