package charts

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/release"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pipeops/pipeops-vm-agent/internal/monitor"
	"github.com/pipeops/pipeops-vm-agent/internal/state"
)

func TestProfileFollowsSummedAllocatable(t *testing.T) {
	for _, tc := range []struct {
		cpu, mem string
		want     string
	}{
		{"1", "16Gi", ProfileSmall},     // fewer than 2 CPUs
		{"4", "3900Mi", ProfileSmall},   // under 4 GiB
		{"2", "4Gi", ProfileMedium},     // the medium floor
		{"8", "8Gi", ProfileMedium},     // the medium ceiling
		{"8", "8200Mi", ProfileLarge},   // above 8 GiB
		{"32", "256Gi", ProfileLarge},   // the kwok test node
		{"1500m", "64Gi", ProfileSmall}, // CPU decides
	} {
		if got := profileFor(resource.MustParse(tc.cpu), resource.MustParse(tc.mem)); got != tc.want {
			t.Errorf("profileFor(%s CPU, %s) = %s; want %s", tc.cpu, tc.mem, got, tc.want)
		}
	}
}

func TestMergeValuesDeepMergesAndNullDeletes(t *testing.T) {
	base := map[string]any{
		"grafana": map[string]any{"enabled": true, "persistence": map[string]any{"enabled": true, "size": "5Gi"}, "service": map[string]any{"port": 3000}},
		"args":    []any{"--kubelet-insecure-tls"},
	}
	over := map[string]any{
		"grafana": map[string]any{"persistence": nil, "service": map[string]any{"type": "NodePort"}},
		"args":    []any{"--v=2"},
		"extra":   "x",
	}
	want := map[string]any{
		"grafana": map[string]any{"enabled": true, "service": map[string]any{"port": 3000, "type": "NodePort"}},
		"args":    []any{"--v=2"}, // lists replace, as in Helm
		"extra":   "x",
	}
	if got := mergeValues(base, over); !reflect.DeepEqual(got, want) {
		t.Errorf("mergeValues = %#v; want %#v", got, want)
	}
	if _, ok := base["grafana"].(map[string]any)["persistence"]; !ok {
		t.Errorf("mergeValues changed its base")
	}
}

func TestValuesHashIgnoresNumberTypesAndKeyOrder(t *testing.T) {
	a := map[string]any{"replicas": 1, "b": map[string]any{"x": int64(2), "y": "z"}}
	b := map[string]any{"b": map[string]any{"y": "z", "x": float64(2)}, "replicas": float64(1)}
	if valuesHash(a) != valuesHash(b) {
		t.Errorf("hashes differ for equal values in Go and stored-JSON shapes")
	}
	if valuesHash(a) == valuesHash(map[string]any{"replicas": 2}) {
		t.Errorf("hash ignores a changed value")
	}
	if valuesHash(nil) != valuesHash(map[string]any{}) {
		t.Errorf("nil and empty values hash differently")
	}
}

func TestGrafanaRootURLFollowsTheSpecFormula(t *testing.T) {
	for _, tc := range []struct{ api, want string }{
		{"https://api.pipeops.io", "https://api.pipeops.io/api/v1/clusters/agent/c-1/proxy/api/v1/namespaces/pipeops-monitoring/services/http:kube-prometheus-stack-grafana:3000/proxy/"},
		{"https://api.pipeops.io/", "https://api.pipeops.io/api/v1/clusters/agent/c-1/proxy/api/v1/namespaces/pipeops-monitoring/services/http:kube-prometheus-stack-grafana:3000/proxy/"},
		{"wss://api.pipeops.io", "https://api.pipeops.io/api/v1/clusters/agent/c-1/proxy/api/v1/namespaces/pipeops-monitoring/services/http:kube-prometheus-stack-grafana:3000/proxy/"},
		{"http://127.0.0.1:8443/cp", "http://127.0.0.1:8443/cp/api/v1/clusters/agent/c-1/proxy/api/v1/namespaces/pipeops-monitoring/services/http:kube-prometheus-stack-grafana:3000/proxy/"},
	} {
		if got := grafanaRootURL(tc.api, "c-1", "pipeops-monitoring", "kube-prometheus-stack-grafana"); got != tc.want {
			t.Errorf("grafanaRootURL(%q) = %q; want %q", tc.api, got, tc.want)
		}
	}
}

// unitManager is an engine for tests that render values without a
// cluster, reporting to a monitor.Manager over an in-memory state store.
func unitManager(t *testing.T, mod func(o *Options)) *Engine {
	t.Helper()
	st, err := state.Open("", nil)
	if err != nil {
		t.Fatal(err)
	}
	return unitManagerWithState(t, st, mod)
}

func unitManagerWithState(t *testing.T, st *state.Store, mod func(o *Options)) *Engine {
	t.Helper()
	o := Options{Settings: monitor.Settings{
		Components: []Component{
			{Name: "prometheus", Release: "kube-prometheus-stack", Namespace: "pipeops-monitoring", Chart: "kube-prometheus-stack"},
			{Name: "loki", Release: "loki", Namespace: "pipeops-monitoring", Chart: "loki-stack"},
			{Name: "metrics_server", Release: "metrics-server", Namespace: "kube-system", Chart: "metrics-server"},
		},
		Grafana: true, GrafanaSubPath: true, APIURL: "https://api.pipeops.io", ClusterDomain: "k8s.example",
		CacheDir: t.TempDir(),
	}}
	if mod != nil {
		mod(&o)
	}
	e, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	mon, err := monitor.New(monitor.Options{Enabled: true, Components: o.Components, Backend: e, State: st})
	if err != nil {
		t.Fatal(err)
	}
	e.sink = mon.Sink()
	return e
}

func TestDefaultsScaleWithProfileAndStorage(t *testing.T) {
	m := unitManager(t, nil)
	prom := m.component("prometheus")
	small, err := m.desiredValues(prom, facts{Profile: ProfileSmall, ClusterID: "c-1"})
	if err != nil {
		t.Fatal(err)
	}
	large, err := m.desiredValues(prom, facts{Profile: ProfileLarge, ClusterID: "c-1", StorageClass: "local-path"})
	if err != nil {
		t.Fatal(err)
	}
	if got := dig(small, "prometheus", "prometheusSpec", "resources", "requests", "memory"); got != "512Mi" {
		t.Errorf("small Prometheus memory request = %v; want 512Mi", got)
	}
	if got := dig(large, "prometheus", "prometheusSpec", "resources", "requests", "memory"); got != "2Gi" {
		t.Errorf("large Prometheus memory request = %v; want 2Gi", got)
	}
	if dig(small, "prometheus", "prometheusSpec", "storageSpec") != nil {
		t.Errorf("a PVC is requested without a default StorageClass")
	}
	if got := dig(large, "prometheus", "prometheusSpec", "storageSpec", "volumeClaimTemplate", "spec", "resources", "requests", "storage"); got != "20Gi" {
		t.Errorf("Prometheus PVC = %v; want 20Gi with a default StorageClass", got)
	}
	if got := dig(large, "prometheus", "prometheusSpec", "retention"); got != "15d" {
		t.Errorf("retention = %v; want 15d", got)
	}
	if got := dig(large, "grafana", "additionalDataSources"); !strings.Contains(toString(got), "http://loki.pipeops-monitoring.svc.k8s.example:3100") {
		t.Errorf("Grafana's Loki datasource = %v; want the configured cluster domain", got)
	}
	if got := dig(large, "grafana", "service", "port"); got != float64(grafanaPort) {
		t.Errorf("Grafana service port = %v; want %d so the advertised URL is true", got, grafanaPort)
	}
	if p1, p2 := dig(small, "grafana", "adminPassword"), dig(large, "grafana", "adminPassword"); p1 == nil || p1 != p2 {
		t.Errorf("Grafana password regenerated between renders: %v vs %v", p1, p2)
	}
	ms, _ := m.desiredValues(m.component("metrics_server"), facts{Profile: ProfileMedium})
	if got := toString(dig(ms, "args")); !strings.Contains(got, "--kubelet-insecure-tls") {
		t.Errorf("metrics-server args = %v; want --kubelet-insecure-tls", got)
	}
}

func toString(v any) string { return fmt.Sprint(v) }

func TestGrafanaWaitsForTheClusterID(t *testing.T) {
	m := unitManager(t, nil)
	if _, err := m.desiredValues(m.component("prometheus"), facts{Profile: ProfileSmall}); !errors.Is(err, errNoClusterID) {
		t.Fatalf("desiredValues without a cluster id = %v; want errNoClusterID", err)
	}
	m = unitManager(t, func(o *Options) { o.GrafanaSubPath = false })
	v, err := m.desiredValues(m.component("prometheus"), facts{Profile: ProfileSmall})
	if err != nil || dig(v, "grafana", "grafana.ini") != nil {
		t.Fatalf("without the sub-path: values %v, err %v; want no root_url and no wait", dig(v, "grafana"), err)
	}
}

func TestUserOverridesWinOverDefaults(t *testing.T) {
	m := unitManager(t, func(o *Options) {
		o.Components[0].Values = map[string]any{"prometheus": map[string]any{"prometheusSpec": map[string]any{"retention": "30d"}},
			"alertmanager": nil}
	})
	v, err := m.desiredValues(m.component("prometheus"), facts{Profile: ProfileSmall, ClusterID: "c"})
	if err != nil {
		t.Fatal(err)
	}
	if dig(v, "prometheus", "prometheusSpec", "retention") != "30d" || dig(v, "prometheus", "prometheusSpec", "resources") == nil {
		t.Errorf("prometheusSpec = %v; want retention 30d and the default resources kept", dig(v, "prometheus", "prometheusSpec"))
	}
	if _, ok := v["alertmanager"]; ok {
		t.Errorf("alertmanager: null did not delete the default")
	}
}

func TestDriftNamesWhatChanged(t *testing.T) {
	vals := map[string]any{"a": float64(1)}
	deployed := func(name, version string, config map[string]any, labels map[string]string, st release.Status) *release.Release {
		return &release.Release{Info: &release.Info{Status: st}, Chart: &chart.Chart{Metadata: &chart.Metadata{Name: name, Version: version}},
			Config: config, Labels: labels}
	}
	local := &chart.Chart{Metadata: &chart.Metadata{Name: "loki-stack", Version: "2.10.2"}}
	for _, tc := range []struct {
		name string
		rel  *release.Release
		src  source
		ch   *chart.Chart
		dig  string
		want string
	}{
		{"unchanged repo chart", deployed("traefik", "33.1.0", vals, nil, release.StatusDeployed), source{Kind: sourceRepo, Ref: "traefik", Version: "33.1.0"}, nil, "", ""},
		{"unpinned repo chart keeps what is deployed", deployed("vpa", "4.7.1", vals, nil, release.StatusDeployed), source{Kind: sourceRepo, Ref: "vpa"}, nil, "", ""},
		{"a new pin", deployed("traefik", "33.1.0", vals, nil, release.StatusDeployed), source{Kind: sourceRepo, Ref: "traefik", Version: "34.0.0"}, nil, "", "chart version 33.1.0 → 34.0.0"},
		{"changed values", deployed("traefik", "33.1.0", map[string]any{"a": float64(2)}, nil, release.StatusDeployed), source{Kind: sourceRepo, Ref: "traefik", Version: "33.1.0"}, nil, "", "values changed"},
		{"another chart", deployed("loki", "6.0.0", vals, nil, release.StatusDeployed), source{Kind: sourceOCI, Ref: "oci://r/loki-stack"}, nil, "", "chart loki → loki-stack"},
		{"edited local chart", deployed("loki-stack", "2.10.2", vals, map[string]string{labelChartDigest: "old"}, release.StatusDeployed), source{Kind: sourceLocal, Ref: "/c/loki-stack"}, local, "new", "chart content changed"},
		{"same local chart", deployed("loki-stack", "2.10.2", vals, map[string]string{labelChartDigest: "d"}, release.StatusDeployed), source{Kind: sourceLocal, Ref: "/c/loki-stack"}, local, "d", ""},
		{"a failed release", deployed("traefik", "33.1.0", vals, nil, release.StatusFailed), source{Kind: sourceRepo, Ref: "traefik", Version: "33.1.0"}, nil, "", "last revision is failed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := drift(tc.rel, tc.src, tc.ch, tc.dig, vals); got != tc.want {
				t.Errorf("drift = %q; want %q", got, tc.want)
			}
		})
	}
}

func TestFindInDirPrefersPinnedArchiveThenDirectoryThenNewest(t *testing.T) {
	dir := t.TempDir()
	touch := func(p string) {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, p), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	touch("traefik-33.1.0.tgz")
	touch("traefik-34.0.0.tgz")
	touch("vpa-4.7.1.tgz")
	touch("vpa-4.10.0.tgz")
	touch("loki-stack/Chart.yaml")
	touch("metrics-server.tgz")
	for _, tc := range []struct{ name, version, want string }{
		{"traefik", "33.1.0", "traefik-33.1.0.tgz"},
		{"vpa", "", "vpa-4.10.0.tgz"}, // semver order, not lexical
		{"loki-stack", "", "loki-stack"},
		{"metrics-server", "", "metrics-server.tgz"},
		{"metrics-server", "3.12.2", "metrics-server.tgz"}, // its version is checked after loading
	} {
		got, err := findInDir(dir, tc.name, tc.version)
		if err != nil || got != filepath.Join(dir, tc.want) {
			t.Errorf("findInDir(%s, %q) = %q, %v; want %s", tc.name, tc.version, got, err, tc.want)
		}
	}
	if _, err := findInDir(dir, "kube-prometheus-stack", "65.1.0"); err == nil || !strings.Contains(err.Error(), "is not in charts_dir") {
		t.Errorf("findInDir of a missing chart = %v; want a not-in-charts_dir error naming what was tried", err)
	}
}

func TestForeignIngressClassSkipsTraefik(t *testing.T) {
	ours := networkingv1.IngressClass{ObjectMeta: metav1.ObjectMeta{Name: "traefik", Annotations: map[string]string{
		"meta.helm.sh/release-name": "traefik", "meta.helm.sh/release-namespace": "pipeops-system"}}}
	nginx := networkingv1.IngressClass{ObjectMeta: metav1.ObjectMeta{Name: "nginx"}, Spec: networkingv1.IngressClassSpec{Controller: "k8s.io/ingress-nginx"}}
	k3s := networkingv1.IngressClass{ObjectMeta: metav1.ObjectMeta{Name: "traefik", Annotations: map[string]string{
		"meta.helm.sh/release-name": "traefik", "meta.helm.sh/release-namespace": "kube-system"}}, Spec: networkingv1.IngressClassSpec{Controller: "traefik.io/ingress-controller"}}
	for _, tc := range []struct {
		name    string
		classes []networkingv1.IngressClass
		skip    bool
	}{
		{"no ingress class", nil, false},
		{"only ours", []networkingv1.IngressClass{ours}, false},
		{"nginx", []networkingv1.IngressClass{nginx}, true},
		{"k3s's own traefik", []networkingv1.IngressClass{k3s}, true},
	} {
		if got := foreignIngressClass(tc.classes, "traefik", "pipeops-system"); (got != "") != tc.skip {
			t.Errorf("%s: foreignIngressClass = %q; want skip=%v", tc.name, got, tc.skip)
		}
	}
}

func TestSecretsAreGeneratedOnceAndPersisted(t *testing.T) {
	dir := t.TempDir()
	st, _ := state.Open(dir, nil)
	m := unitManagerWithState(t, st, nil)
	a, err := m.secret(monitor.SecretGrafanaPassword)
	if err != nil || len(a) != 43 {
		t.Fatalf("secret = %q, %v; want 43 characters", a, err)
	}
	st2, _ := state.Open(dir, nil)
	m2 := unitManagerWithState(t, st2, nil)
	if b, _ := m2.secret(monitor.SecretGrafanaPassword); b != a {
		t.Errorf("secret after reopening the state = %q; want the persisted %q", b, a)
	}
	if c, _ := m2.secret(monitor.SecretLokiPassword); c == a {
		t.Errorf("two secrets are equal")
	}
}
