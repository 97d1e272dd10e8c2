package installer

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
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
	HA struct {
		Enabled bool `yaml:"enabled"`
	} `yaml:"ha"`
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
func mergeDropIn(d installDropIn, apiURL, clusterName string, ha bool) installDropIn {
	if ha { // sticky: a reinstall without --ha keeps it (turn it off in a later drop-in)
		d.HA.Enabled = true
	}
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
	if d.HA.Enabled {
		b.WriteString("ha:\n  enabled: true\n")
	}
	return []byte(b.String())
}

// txn remembers what it overwrote so a failed install can put it back.
type txn struct {
	undo []func() error
}

// write replaces path atomically when its content differs; it reports
// whether it wrote. The mode is enforced even when the content is equal.
func (t *txn) write(path string, b []byte, mode os.FileMode) (bool, error) {
	old, err := os.ReadFile(path)
	if err == nil && bytes.Equal(old, b) {
		return false, os.Chmod(path, mode)
	}
	existed := err == nil
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return false, err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return false, err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return false, err
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Close(); err != nil {
		return false, err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return false, err
	}
	t.undo = append(t.undo, func() error {
		if !existed {
			return os.Remove(path)
		}
		_, err := (&txn{}).write(path, old, mode)
		return err
	})
	return true, nil
}

// remove deletes path if it exists, keeping its content for a rollback; it
// reports whether it removed anything.
func (t *txn) remove(path string) (bool, error) {
	st, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	old, err := os.ReadFile(path)
	if err != nil {
		return false, err
	}
	if err := os.Remove(path); err != nil {
		return false, err
	}
	t.undo = append(t.undo, func() error {
		_, err := (&txn{}).write(path, old, st.Mode().Perm())
		return err
	})
	return true, nil
}

func (t *txn) rollback() error {
	var errs []error
	for i := len(t.undo) - 1; i >= 0; i-- {
		errs = append(errs, t.undo[i]())
	}
	return errors.Join(errs...)
}
