package installer

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pipeops/pipeops-vm-agent/internal/config"
)

const packagedConfig = "../packaging/agent.yaml"

func load(t *testing.T, path string) *config.Config {
	t.Helper()
	cfg, _, err := config.Load(config.Options{
		Path: path, DropInDir: filepath.Join(t.TempDir(), "none"), TokenFallback: filepath.Join(t.TempDir(), "none"),
		Getenv: func(string) string { return "" }, Environ: func() []string { return nil },
	})
	if err != nil {
		t.Fatalf("Load(%s): %v", path, err)
	}
	return cfg
}

func TestPackagedAgentYAMLCountsAsAbsent(t *testing.T) {
	// A conffile that sets nothing: upgrades can change it without a prompt
	// mattering, and the agent behaves as if it were not there.
	if cfg := load(t, packagedConfig); len(cfg.Sources) != 0 {
		t.Fatalf("packaging/agent.yaml sets values (sources %v); it must hold commented defaults only", cfg.Sources)
	}
}

func TestPackagedAgentYAMLDocumentsTheRealDefaults(t *testing.T) {
	// Uncomment the settings ("# key: value"; "## " lines stay prose): the
	// result must load strictly and equal Default(), so the comments never lie.
	b, err := os.ReadFile(packagedConfig)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		trim := strings.TrimLeft(line, " ")
		if strings.HasPrefix(trim, "# ") && !strings.HasPrefix(trim, "## ") {
			out = append(out, strings.Replace(line, "# ", "", 1))
		}
	}
	p := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(p, []byte(strings.Join(out, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, _ := json.Marshal(load(t, p))
	want, _ := json.Marshal(config.Default())
	if string(got) != string(want) {
		t.Fatalf("uncommented packaging/agent.yaml differs from config.Default():\n got %s\nwant %s", got, want)
	}
}
