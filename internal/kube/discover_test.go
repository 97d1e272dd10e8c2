package kube_test

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pipeops/pipeops-vm-agent/internal/config"
	"github.com/pipeops/pipeops-vm-agent/internal/kube"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

// kubeconfigFor writes a minimal valid kubeconfig naming server.
func kubeconfigFor(t *testing.T, dir, name, server string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	body := `apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "` + server + `", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDiscoveryTakesTheFirstUsableKubeconfigInOrder(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	good := func(n string) string { return kubeconfigFor(t, dir, n, "https://"+n+".example:6443") }
	garbage := filepath.Join(dir, "garbage.yaml")
	os.WriteFile(garbage, []byte("this: [is not a kubeconfig"), 0o600)
	missing := filepath.Join(dir, "missing.yaml")
	wk := []kube.Candidate{{Source: "k3s", Path: good("k3s")}, {Source: "rke2", Path: good("rke2")},
		{Source: "kubeadm", Path: good("kubeadm")}, {Source: "microk8s", Path: good("microk8s")}}

	tests := []struct {
		name       string
		configured string
		env        map[string]string
		wellKnown  []kube.Candidate
		wantSource string
	}{
		{"the configured path wins over everything", good("cfg"),
			map[string]string{"PIPEOPS_KUBECONFIG": good("pipeops"), "KUBECONFIG": good("kc")}, wk, "kubernetes.kubeconfig"},
		{"PIPEOPS_KUBECONFIG comes second", "",
			map[string]string{"PIPEOPS_KUBECONFIG": good("pipeops"), "KUBECONFIG": good("kc")}, wk, "PIPEOPS_KUBECONFIG"},
		{"a configured path that does not exist falls through", missing,
			map[string]string{"PIPEOPS_KUBECONFIG": good("pipeops")}, wk, "PIPEOPS_KUBECONFIG"},
		{"KUBECONFIG comes third", "", map[string]string{"KUBECONFIG": good("kc")}, wk, "KUBECONFIG"},
		{"a KUBECONFIG list is merged", "", map[string]string{"KUBECONFIG": missing + ":" + good("kc2")}, wk, "KUBECONFIG"},
		{"an invalid file falls through to k3s", garbage, map[string]string{"PIPEOPS_KUBECONFIG": garbage}, wk, "k3s"},
		{"rke2 comes after k3s", "", nil, wk[1:], "rke2"},
		{"kubeadm comes after rke2", "", nil, wk[2:], "kubeadm"},
		{"microk8s is last", "", nil, wk[3:], "microk8s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			getenv := func(k string) string { return tt.env[k] }
			cands := kube.Candidates(config.Kubernetes{Kubeconfig: tt.configured}, getenv, tt.wellKnown)
			cfg, src, err := kube.Discover(cands)
			if err != nil {
				t.Fatalf("Discover: %v", err)
			}
			if src.Source != tt.wantSource {
				t.Fatalf("source = %s, want %s", src, tt.wantSource)
			}
			if cfg.Host == "" {
				t.Fatal("no host in the discovered config")
			}
		})
	}
}

func TestDiscoveryErrorListsEveryPathTriedAndWhy(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.yaml")
	os.WriteFile(garbage, []byte("this: [is not a kubeconfig"), 0o600)
	empty := filepath.Join(dir, "empty.yaml")
	os.WriteFile(empty, nil, 0o600)
	noServer := filepath.Join(dir, "noserver.yaml")
	os.WriteFile(noServer, []byte("apiVersion: v1\nkind: Config\ncurrent-context: x\ncontexts: [{name: x, context: {cluster: c, user: u}}]\nclusters: [{name: c, cluster: {}}]\nusers: [{name: u, user: {}}]\n"), 0o600)
	env := map[string]string{"PIPEOPS_KUBECONFIG": garbage, "KUBECONFIG": dir}
	wk := []kube.Candidate{{Source: "k3s", Path: filepath.Join(dir, "k3s.yaml")}, {Source: "rke2", Path: empty},
		{Source: "kubeadm", Path: noServer}, {Source: "microk8s", Path: filepath.Join(dir, "client.config")}}
	_, _, err := kube.Discover(kube.Candidates(config.Kubernetes{}, func(k string) string { return env[k] }, wk))
	var de *kube.DiscoveryError
	if !errors.As(err, &de) || len(de.Tried) != 7 {
		t.Fatalf("err = %v; want a DiscoveryError with 7 attempts", err)
	}
	got := strings.ReplaceAll(strings.ReplaceAll(err.Error(), dir, "$DIR"), "] [", "]\n[")
	golden := filepath.Join("testdata", "discovery-error.golden")
	if *update {
		os.WriteFile(golden, []byte(got+"\n"), 0o644)
	}
	want, rerr := os.ReadFile(golden)
	if rerr != nil {
		t.Fatalf("%v (run go test -update to create it)", rerr)
	}
	if got+"\n" != string(want) {
		t.Fatalf("discovery error changed (go test -update to accept):\n--- got\n%s\n--- want\n%s", got, want)
	}
}
