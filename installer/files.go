package installer

import (
	"encoding/json"
	"strings"

	"go.yaml.in/yaml/v3"
)

// installDropIn is the part of the schema that 10-install.yaml carries.
type installDropIn struct {
	Version int `yaml:"version"`
	Agent   struct {
		Name string `yaml:"name"`
	} `yaml:"agent"`
	PipeOps struct {
		APIURL string `yaml:"api_url"`
	} `yaml:"pipeops"`
}

// parseDropIn reads a previous 10-install.yaml; anything unreadable counts
// as empty, since the file is ours and is rewritten whole.
func parseDropIn(b []byte) installDropIn {
	var d installDropIn
	_ = yaml.Unmarshal(b, &d)
	return d
}

// mergeDropIn keeps earlier values for flags not given this time, so a
// reinstall with only --token-file keeps the cluster name.
func mergeDropIn(d installDropIn, apiURL, clusterName string) installDropIn {
	if apiURL != "" {
		d.PipeOps.APIURL = apiURL
	}
	if clusterName != "" {
		d.Agent.Name = clusterName
	}
	return d
}

// quote writes a YAML double-quoted scalar (JSON strings are valid YAML).
func quote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// renderDropIn writes agent.d/10-install.yaml. The packaged agent.yaml is a
// conffile and is never edited (platform.md §5); settings land here.
func renderDropIn(d installDropIn) []byte {
	var b strings.Builder
	b.WriteString("# Written by pipeopsctl install; rerun it with --api-url or --cluster-name to change\n")
	b.WriteString("# these, or override them in a later file such as agent.d/50-local.yaml.\n")
	b.WriteString("version: 1\n")
	if d.Agent.Name != "" {
		b.WriteString("agent:\n  name: " + quote(d.Agent.Name) + "\n")
	}
	if d.PipeOps.APIURL != "" {
		b.WriteString("pipeops:\n  api_url: " + quote(d.PipeOps.APIURL) + "\n")
	}
	return []byte(b.String())
}
