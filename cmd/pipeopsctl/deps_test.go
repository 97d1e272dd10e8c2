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
	banned := []struct{ prefix, why string }{
		{"k8s.io/", "reach it through the local API instead"},
		{"helm.sh/", "reach it through the local API instead"},
		// Both yamux implementations: the agent's tunnel runs libp2p's, the
		// reference control plane hashicorp's.
		{"github.com/hashicorp/yamux", "reach it through the local API instead"},
		{"github.com/libp2p/go-yamux", "reach it through the local API instead"},
		{"github.com/gorilla/websocket", "reach it through the local API instead"},
		// The CLI reads the journal through journalctl and never logs to it;
		// internal/logging is what links it, so config must not import logging.
		{"github.com/coreos/go-systemd/", "only the agent talks to systemd's journal and notify sockets"},
	}
	for _, pkg := range strings.Fields(string(out)) {
		for _, b := range banned {
			if strings.HasPrefix(pkg, b.prefix) {
				t.Errorf("pipeopsctl links %s; %s", pkg, b.why)
			}
		}
	}
}
