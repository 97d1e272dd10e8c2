package main

import (
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// TestCommittedBundleIsThePinnedModulesCRDs regenerates the bundle from the
// module proxy's copy of prometheus-operator at the pinned version and
// checksum, and compares it with the one the Helm worker embeds.
func TestCommittedBundleIsThePinnedModulesCRDs(t *testing.T) {
	want, err := Bundle()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join("..", "..", "internal", "charts", "crds", "prometheus-operator-"+Version+".yaml.gz")
	f, err := os.Open(p)
	if err != nil {
		t.Fatalf("%v (run go generate ./internal/charts)", err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s is not %s@%s's %s (%d bytes; the module's are %d): run go generate ./internal/charts",
			p, Module, Version, Dir, len(got), len(want))
	}
	if n := bytes.Count(got, []byte("\nkind: CustomResourceDefinition\n")); n != 10 {
		t.Errorf("bundle holds %d CRDs; want the 10 of prometheus-operator %s", n, Version)
	}
}
