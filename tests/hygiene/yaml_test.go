package hygiene

import (
	"strings"
	"testing"
)

// yamlLibrary is the module's one YAML library: config's strict decoding
// needs its yaml.Node line numbers and KnownFields.
const yamlLibrary = "go.yaml.in/yaml/v3"

// yamlAllowed are the other imports with "yaml" in their path that our
// packages may use, and why.
var yamlAllowed = map[string]string{
	// apimachinery's manifest stream decoder into unstructured objects
	// (charts' CRD bundle); it is part of client-go's world, not a second
	// general-purpose YAML library.
	"k8s.io/apimachinery/pkg/util/yaml": "the Kubernetes manifest decoder",
}

// TestOurPackagesImportOneYAMLLibrary keeps every package of the module, tests
// included, on one YAML library. Kubernetes and Helm link sigs.k8s.io/yaml
// themselves; the rule is about what our code imports.
func TestOurPackagesImportOneYAMLLibrary(t *testing.T) {
	for _, p := range listPackages(t) {
		for _, imp := range p.allImports() {
			if imp == yamlLibrary || yamlAllowed[imp] != "" || !strings.Contains(strings.ToLower(imp), "yaml") {
				continue
			}
			t.Errorf("%s imports %s; use %s, the module's one YAML library", p.ImportPath, imp, yamlLibrary)
		}
	}
}

// allImports is what the package and its tests import.
func (p pkg) allImports() []string {
	return append(append(append([]string(nil), p.Imports...), p.TestImports...), p.XTestImports...)
}
