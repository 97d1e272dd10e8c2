package charts

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	_ "embed" // the pinned CRD bundle
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/Masterminds/semver/v3"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"

	"github.com/pipeops/pipeops-vm-agent/internal/logging"
)

//go:generate go run ../../scripts/gencrds

// PrometheusOperatorVersion is the prometheus-operator release whose CRDs
// are applied before kube-prometheus-stack, which is installed with
// SkipCRDs (protocol.md §12).
const PrometheusOperatorVersion = "0.70.0"

// prometheusCRDBundle is example/prometheus-operator-crd of the Go module
// github.com/prometheus-operator/prometheus-operator v0.70.0, gzipped by
// scripts/gencrds, whose test checks it against the module proxy's copy.
//
//go:embed crds/prometheus-operator-v0.70.0.yaml.gz
var prometheusCRDBundle []byte

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// Annotations on applied CRDs.
const (
	// annotationCRDBundle records which bundle the agent applied, so an
	// unchanged bundle is not sent again every round.
	annotationCRDBundle = "pipeops.io/crd-bundle"
	// annotationOperatorVersion is prometheus-operator's own version stamp.
	annotationOperatorVersion = "operator.prometheus.io/version"
	fieldManager              = "pipeops-agent"
)

var (
	crdOnce   sync.Once
	crdObjs   []*unstructured.Unstructured
	crdDigest string
	crdErr    error
)

// prometheusCRDs decodes the bundle once.
func prometheusCRDs() ([]*unstructured.Unstructured, string, error) {
	crdOnce.Do(func() {
		zr, err := gzip.NewReader(bytes.NewReader(prometheusCRDBundle))
		if err != nil {
			crdErr = fmt.Errorf("open the CRD bundle: %w", err)
			return
		}
		raw, err := io.ReadAll(zr)
		if err != nil {
			crdErr = fmt.Errorf("read the CRD bundle: %w", err)
			return
		}
		sum := sha256.Sum256(raw)
		crdDigest = hex.EncodeToString(sum[:8])
		dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(raw), 64<<10)
		for {
			u := &unstructured.Unstructured{}
			if err := dec.Decode(&u.Object); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				crdErr = fmt.Errorf("decode the CRD bundle: %w", err)
				return
			}
			if u.GetKind() == "CustomResourceDefinition" {
				crdObjs = append(crdObjs, u)
			}
		}
		if len(crdObjs) == 0 {
			crdErr = errors.New("the CRD bundle holds no CRDs")
		}
	})
	return crdObjs, crdDigest, crdErr
}

// ensurePrometheusCRDs applies the pinned CRDs server-side and waits until
// they are established. It sends nothing when every CRD already carries
// this bundle, and never downgrades a CRD that a newer prometheus-operator
// installed. The CRDs are never deleted: that would delete every
// ServiceMonitor and PrometheusRule in the cluster.
func (m *Engine) ensurePrometheusCRDs(ctx context.Context) (string, error) {
	objs, digest, err := prometheusCRDs()
	if err != nil {
		return "", err
	}
	res := m.dyn.Resource(crdGVR)
	pinned := semver.MustParse(PrometheusOperatorVersion)
	var applied, newer []string
	for _, o := range objs {
		cur, err := m.meta.Resource(crdGVR).Get(ctx, o.GetName(), metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
		case err != nil:
			return "", fmt.Errorf("read CRD %s: %w", o.GetName(), err)
		case cur.GetAnnotations()[annotationCRDBundle] == digest:
			continue // applied by this agent version already
		default:
			if v, err := semver.NewVersion(cur.GetAnnotations()[annotationOperatorVersion]); err == nil && v.GreaterThan(pinned) {
				newer = append(newer, o.GetName()+" ("+v.String()+")")
				continue
			}
		}
		obj := o.DeepCopy()
		ann := obj.GetAnnotations()
		if ann == nil {
			ann = map[string]string{}
		}
		ann[annotationCRDBundle] = digest
		obj.SetAnnotations(ann)
		obj.SetLabels(mergeLabels(obj.GetLabels(), map[string]string{labelManagedBy: "pipeops-agent"}))
		// Force: take the fields over from a Helm release that installed the
		// CRDs before (kube-prometheus-stack's crds/ or an older agent).
		if _, err := res.Apply(ctx, obj.GetName(), obj, metav1.ApplyOptions{FieldManager: fieldManager, Force: true}); err != nil {
			return "", fmt.Errorf("apply CRD %s: %w", obj.GetName(), err)
		}
		applied = append(applied, obj.GetName())
	}
	if len(applied) > 0 {
		if err := m.waitEstablished(ctx, res, applied); err != nil {
			return "", err
		}
		m.log.Info("prometheus-operator CRDs applied", logging.KeyVersion, PrometheusOperatorVersion, logging.KeyCount, len(applied))
	}
	why := "prometheus-operator " + PrometheusOperatorVersion + " CRDs"
	if len(newer) > 0 {
		why += "; kept newer " + strings.Join(newer, ", ")
	}
	return why, nil
}

// waitEstablished polls until each CRD reports Established (a minute at most).
func (m *Engine) waitEstablished(ctx context.Context, res dynamic.NamespaceableResourceInterface, names []string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	t := time.NewTicker(m.opts.PollInterval / 4)
	defer t.Stop()
	for _, n := range names {
		for {
			u, err := res.Get(ctx, n, metav1.GetOptions{})
			if err == nil && established(u) {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("CRD %s not established: %w", n, ctx.Err())
			case <-t.C:
			}
		}
	}
	return nil
}

func established(u *unstructured.Unstructured) bool {
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		if cm, ok := c.(map[string]any); ok && cm["type"] == "Established" && cm["status"] == "True" {
			return true
		}
	}
	return false
}

func mergeLabels(a, b map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		out[k] = v
	}
	return out
}
