// Command gencrds writes the prometheus-operator CRDs that the Helm worker
// applies before kube-prometheus-stack (protocol.md §12: installed with
// SkipCRDs, the CRDs from prometheus-operator v0.70.0) into
// internal/charts/crds as one gzipped YAML stream, taken from the Go module
// github.com/prometheus-operator/prometheus-operator at that version
// (example/prometheus-operator-crd, the set kube-prometheus-stack ships).
// The module comes from the Go module proxy and must have the pinned
// checksum, so the committed bundle is a reproducible copy of it, never an
// edited one: the test in this directory regenerates it and compares.
//
//	go generate ./internal/charts   (runs: go run ../../scripts/gencrds)
package main

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// The pin. Bump all three together (and the bundle's file name in
// internal/charts follows Version).
const (
	Module  = "github.com/prometheus-operator/prometheus-operator"
	Version = "v0.70.0"
	Sum     = "h1:kMufKWvqJl08Kh0oue3VLmTsowYKKqCQJa7tqXo+DJI="
	Dir     = "example/prometheus-operator-crd"
)

func main() {
	out := filepath.Join("crds", "prometheus-operator-"+Version+".yaml.gz")
	if len(os.Args) == 2 {
		out = os.Args[1]
	}
	yaml, err := Bundle()
	if err != nil {
		fmt.Fprintln(os.Stderr, "gencrds:", err)
		os.Exit(1)
	}
	gz, err := gzipped(yaml)
	if err == nil {
		err = os.WriteFile(out, gz, 0o644)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "gencrds:", err)
		os.Exit(1)
	}
}

// Bundle downloads the pinned module (or finds it in the module cache),
// checks its checksum and returns its CRDs as one YAML stream: each file in
// name order, after a "# Source:" comment line.
func Bundle() ([]byte, error) {
	cmd := exec.Command("go", "mod", "download", "-json", Module+"@"+Version)
	cmd.Dir = os.TempDir() // outside any module: the project's go.mod stays as it is
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GO111MODULE=on")
	raw, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go mod download %s@%s: %w", Module, Version, err)
	}
	var info struct{ Dir, Sum, Error string }
	if err := json.Unmarshal(raw, &info); err != nil {
		return nil, fmt.Errorf("go mod download: %w", err)
	}
	if info.Error != "" {
		return nil, fmt.Errorf("go mod download %s@%s: %s", Module, Version, info.Error)
	}
	if info.Sum != Sum {
		return nil, fmt.Errorf("%s@%s has checksum %s; want the pinned %s", Module, Version, info.Sum, Sum)
	}
	files, err := filepath.Glob(filepath.Join(info.Dir, Dir, "*.yaml"))
	if err != nil || len(files) == 0 {
		return nil, fmt.Errorf("no CRDs in %s of %s@%s", Dir, Module, Version)
	}
	slices.Sort(files)
	var b bytes.Buffer
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(&b, "# Source: %s@%s/%s/%s\n", Module, Version, Dir, filepath.Base(f))
		if !bytes.HasPrefix(data, []byte("---")) {
			b.WriteString("---\n")
		}
		b.Write(data)
		if !strings.HasSuffix(string(data), "\n") {
			b.WriteString("\n")
		}
	}
	return b.Bytes(), nil
}

// gzipped is `gzip -9n`: no name, no time.
func gzipped(b []byte) ([]byte, error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return nil, err
	}
	if _, err := zw.Write(b); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
