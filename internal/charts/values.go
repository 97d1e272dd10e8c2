package charts

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/pipeops/pipeops-vm-agent/internal/monitor"
)

// Profiles size the stack from the cluster's summed node allocatable
// (protocol.md §12: low < 4 GiB or < 2 CPU, medium 4–8 GiB, high above).
const (
	ProfileSmall  = "small"
	ProfileMedium = "medium"
	ProfileLarge  = "large"
)

// profileFor picks the profile from summed allocatable CPU and memory.
func profileFor(cpu, memory resource.Quantity) string {
	const gi = 1 << 30
	switch {
	case memory.Value() < 4*gi || cpu.MilliValue() < 2000:
		return ProfileSmall
	case memory.Value() <= 8*gi:
		return ProfileMedium
	}
	return ProfileLarge
}

// size is the resources of one workload in one profile.
type size struct{ cpu, memory, memoryLimit string }

func (s size) resources() map[string]any {
	return map[string]any{
		"requests": map[string]any{"cpu": s.cpu, "memory": s.memory},
		"limits":   map[string]any{"memory": s.memoryLimit},
	}
}

// sizes per workload and profile. Memory limits only: CPU limits throttle
// Prometheus compaction without protecting anything.
var sizes = map[string]map[string]size{
	"prometheus":     {ProfileSmall: {"200m", "512Mi", "1Gi"}, ProfileMedium: {"500m", "1Gi", "2Gi"}, ProfileLarge: {"1", "2Gi", "4Gi"}},
	"alertmanager":   {ProfileSmall: {"25m", "64Mi", "128Mi"}, ProfileMedium: {"50m", "128Mi", "256Mi"}, ProfileLarge: {"100m", "256Mi", "512Mi"}},
	"grafana":        {ProfileSmall: {"50m", "128Mi", "256Mi"}, ProfileMedium: {"100m", "256Mi", "512Mi"}, ProfileLarge: {"200m", "512Mi", "1Gi"}},
	"loki":           {ProfileSmall: {"100m", "256Mi", "512Mi"}, ProfileMedium: {"200m", "512Mi", "1Gi"}, ProfileLarge: {"500m", "1Gi", "2Gi"}},
	"metrics_server": {ProfileSmall: {"50m", "64Mi", "128Mi"}, ProfileMedium: {"100m", "128Mi", "256Mi"}, ProfileLarge: {"100m", "200Mi", "400Mi"}},
	"traefik":        {ProfileSmall: {"50m", "64Mi", "128Mi"}, ProfileMedium: {"100m", "128Mi", "256Mi"}, ProfileLarge: {"200m", "256Mi", "512Mi"}},
	"vpa":            {ProfileSmall: {"50m", "128Mi", "256Mi"}, ProfileMedium: {"50m", "256Mi", "512Mi"}, ProfileLarge: {"100m", "512Mi", "1Gi"}},
	"cert_manager":   {ProfileSmall: {"25m", "96Mi", "256Mi"}, ProfileMedium: {"50m", "128Mi", "384Mi"}, ProfileLarge: {"100m", "256Mi", "512Mi"}},
}

// facts are what the defaults depend on, gathered once per round.
type facts struct {
	Profile      string
	StorageClass string // the default StorageClass, "" when there is none
	ClusterID    string
}

// errNoClusterID holds back the Grafana release until registration, because
// its root_url contains the cluster id.
var errNoClusterID = monitor.ErrNoClusterID

// Grafana's Service: named and numbered explicitly so that root_url and the
// advertised URL are true for any release name (the chart's default port is 80).
const grafanaPort = 3000

func grafanaService(prometheusRelease string) string { return prometheusRelease + "-grafana" }

// defaults returns the agent's values for one component, before the user's
// overrides. The result depends only on its inputs, so an unchanged cluster
// renders identical values and no Helm call follows.
func (m *Engine) defaults(c *Component, f facts) (map[string]any, error) {
	res := func(w string) map[string]any { return sizes[w][f.Profile].resources() }
	persist := f.StorageClass != ""
	switch c.Name {
	case "metrics_server":
		return map[string]any{"args": []any{"--kubelet-insecure-tls"}, "resources": res("metrics_server")}, nil
	case "vpa":
		return map[string]any{"recommender": map[string]any{"resources": res("vpa")}}, nil
	case "traefik":
		return map[string]any{
			"deployment":   map[string]any{"replicas": 1},
			"service":      map[string]any{"type": "LoadBalancer"},
			"metrics":      map[string]any{"prometheus": map[string]any{"entryPoint": "metrics"}},
			"ingressClass": map[string]any{"enabled": true, "isDefaultClass": true},
			"resources":    res("traefik"),
		}, nil
	case "cert_manager":
		// installCRDs is the switch of the pinned v1.13 chart (later charts: crds.enabled).
		return map[string]any{"installCRDs": true, "resources": res("cert_manager"),
			"webhook": map[string]any{"resources": res("cert_manager")}, "cainjector": map[string]any{"resources": res("cert_manager")}}, nil
	case "loki":
		loki := map[string]any{"resources": res("loki"), "persistence": map[string]any{"enabled": persist}}
		if persist {
			loki["persistence"] = map[string]any{"enabled": true, "size": "10Gi"}
		}
		return map[string]any{"loki": loki, "promtail": map[string]any{"enabled": true}, "grafana": map[string]any{"enabled": false}}, nil
	case "prometheus":
		return m.prometheusDefaults(c, f, res, persist)
	}
	return map[string]any{}, nil
}

func (m *Engine) prometheusDefaults(c *Component, f facts, res func(string) map[string]any, persist bool) (map[string]any, error) {
	promSpec := map[string]any{"retention": "15d", "resources": res("prometheus")}
	amSpec := map[string]any{"resources": res("alertmanager")}
	if persist {
		promSpec["storageSpec"] = pvc("20Gi")
		amSpec["storage"] = pvc("2Gi")
	}
	vals := map[string]any{
		"prometheus":   map[string]any{"prometheusSpec": promSpec},
		"alertmanager": map[string]any{"alertmanagerSpec": amSpec},
		"grafana":      map[string]any{"enabled": false},
	}
	if !m.opts.Grafana {
		return vals, nil
	}
	pw, err := m.secret(monitor.SecretGrafanaPassword)
	if err != nil {
		return nil, err
	}
	g := map[string]any{
		"enabled":          true,
		"fullnameOverride": grafanaService(c.Release),
		"adminUser":        "admin",
		"adminPassword":    pw,
		"service":          map[string]any{"port": grafanaPort},
		"resources":        res("grafana"),
		"persistence":      map[string]any{"enabled": persist},
	}
	if persist {
		g["persistence"] = map[string]any{"enabled": true, "size": "5Gi"}
	}
	if m.opts.GrafanaSubPath {
		if f.ClusterID == "" {
			return nil, errNoClusterID
		}
		g["grafana.ini"] = map[string]any{"server": map[string]any{
			"root_url":            grafanaRootURL(m.opts.APIURL, f.ClusterID, c.Namespace, grafanaService(c.Release)),
			"serve_from_sub_path": true,
		}}
	}
	if l := m.component("loki"); l != nil {
		g["additionalDataSources"] = []any{map[string]any{
			"name": "Loki", "type": "loki", "access": "proxy",
			"url": fmt.Sprintf("http://%s.%s.svc.%s:3100", l.Release, l.Namespace, m.opts.ClusterDomain),
		}}
	}
	vals["grafana"] = g
	return vals, nil
}

func pvc(sizeStr string) map[string]any {
	return map[string]any{"volumeClaimTemplate": map[string]any{"spec": map[string]any{
		"accessModes": []any{"ReadWriteOnce"},
		"resources":   map[string]any{"requests": map[string]any{"storage": sizeStr}},
	}}}
}

// grafanaRootURL is protocol.md §12's formula: Grafana is reached through the
// control plane's Kubernetes service proxy for this cluster.
func grafanaRootURL(apiURL, clusterID, namespace, service string) string {
	base := strings.TrimRight(apiURL, "/")
	// A ws(s):// api_url names the same host; the browser reaches it over http(s).
	if rest, ok := strings.CutPrefix(base, "wss://"); ok {
		base = "https://" + rest
	} else if rest, ok := strings.CutPrefix(base, "ws://"); ok {
		base = "http://" + rest
	}
	return fmt.Sprintf("%s/api/v1/clusters/agent/%s/proxy/api/v1/namespaces/%s/services/http:%s:%d/proxy/",
		base, clusterID, namespace, service, grafanaPort)
}

// mergeValues deep-merges overrides into base (a copy): maps merge key by
// key, anything else replaces, and a null override deletes the key, as
// `helm --set key=null` does.
func mergeValues(base, overrides map[string]any) map[string]any {
	out := make(map[string]any, len(base))
	for k, v := range base {
		out[k] = v
	}
	for k, ov := range overrides {
		if ov == nil {
			delete(out, k)
			continue
		}
		bm, bok := out[k].(map[string]any)
		om, ook := ov.(map[string]any)
		if bok && ook {
			out[k] = mergeValues(bm, om)
			continue
		}
		out[k] = ov
	}
	return out
}

// normalize gives values the shape Helm stores them in (JSON types: float64
// numbers, []any, map[string]any), so desired and deployed compare equal.
func normalize(v map[string]any) (map[string]any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode values: %w", err)
	}
	out := map[string]any{}
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("decode values: %w", err)
	}
	return out, nil
}

// valuesHash is a stable fingerprint of values (encoding/json sorts map keys).
func valuesHash(v map[string]any) string {
	if v == nil {
		v = map[string]any{}
	}
	n, err := normalize(v)
	if err != nil {
		return "unencodable"
	}
	b, _ := json.Marshal(n)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
