package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestPipeopsctlDeps keeps the CLI small and fast to start: it reaches the
// agent through the local API instead of linking the agent's heavy libraries.
func TestPipeopsctlDeps(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	// Both yamux implementations: the agent's tunnel runs libp2p's, the
	// reference control plane hashicorp's.
	banned := []string{"k8s.io/", "helm.sh/", "github.com/hashicorp/yamux", "github.com/libp2p/go-yamux",
		"github.com/gorilla/websocket"}
	for _, pkg := range strings.Fields(string(out)) {
		for _, b := range banned {
			if strings.HasPrefix(pkg, b) {
				t.Errorf("pipeopsctl links %s; reach it through the local API instead", pkg)
			}
		}
	}
}
