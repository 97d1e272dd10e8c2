package kube

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/pipeops/pipeops-vm-agent/internal/config"
)

// WellKnownKubeconfigs are the distribution defaults tried after the
// configured path and the environment, in this order (issue 3, protocol.md §14.1).
var WellKnownKubeconfigs = []Candidate{
	{Source: "k3s", Path: "/etc/rancher/k3s/k3s.yaml"},
	{Source: "rke2", Path: "/etc/rancher/rke2/rke2.yaml"},
	{Source: "kubeadm", Path: "/etc/kubernetes/admin.conf"},
	{Source: "microk8s", Path: "/var/snap/microk8s/current/credentials/client.config"},
}

// Candidate is one place a kubeconfig may come from.
type Candidate struct {
	Source string // "kubernetes.kubeconfig", "PIPEOPS_KUBECONFIG", "KUBECONFIG", "k3s", ...
	Path   string // may be a list (KUBECONFIG=a:b), which clientcmd merges
}

func (c Candidate) String() string { return c.Source + " (" + c.Path + ")" }

// Candidates lists the kubeconfig sources in the order they are tried:
// config kubernetes.kubeconfig, $PIPEOPS_KUBECONFIG, $KUBECONFIG, then the
// well-known paths. Unset sources are listed with an empty Path.
func Candidates(cfg config.Kubernetes, getenv func(string) string, wellKnown []Candidate) []Candidate {
	out := []Candidate{
		{Source: "kubernetes.kubeconfig", Path: cfg.Kubeconfig},
		{Source: "PIPEOPS_KUBECONFIG", Path: getenv("PIPEOPS_KUBECONFIG")},
		{Source: "KUBECONFIG", Path: getenv("KUBECONFIG")},
	}
	return append(out, wellKnown...)
}

// DiscoveryError lists every candidate that was tried and why it failed.
type DiscoveryError struct {
	Tried []Attempt
}

// Attempt is one failed candidate.
type Attempt struct {
	Candidate Candidate
	Err       error
}

func (e *DiscoveryError) Error() string {
	var b strings.Builder
	b.WriteString("no usable kubeconfig; set kubernetes.kubeconfig or PIPEOPS_KUBECONFIG to a readable admin kubeconfig. Tried:")
	for _, a := range e.Tried {
		fmt.Fprintf(&b, " [%s: %v]", a.Candidate.Source+pathSuffix(a.Candidate.Path), a.Err)
	}
	return b.String()
}

func pathSuffix(p string) string {
	if p == "" {
		return ""
	}
	return " " + p
}

var errUnset = errors.New("not set")

// Discover returns the admin rest.Config from the first candidate that loads:
// the file(s) exist, are readable, parse, and name a server. It does not
// contact the server: an API outage must not switch kubeconfigs.
func Discover(cands []Candidate) (*rest.Config, Candidate, error) {
	de := &DiscoveryError{}
	for _, c := range cands {
		if c.Path == "" {
			de.Tried = append(de.Tried, Attempt{c, errUnset})
			continue
		}
		cfg, err := load(c.Path)
		if err != nil {
			de.Tried = append(de.Tried, Attempt{c, err})
			continue
		}
		return cfg, c, nil
	}
	return nil, Candidate{}, de
}

// load reads one kubeconfig path, or a KUBECONFIG-style list of paths of
// which, as with kubectl, missing ones are skipped.
func load(path string) (*rest.Config, error) {
	var paths []string
	var errs []error
	for _, p := range filepath.SplitList(path) {
		if err := readable(p); err != nil {
			errs = append(errs, err)
			continue
		}
		paths = append(paths, p)
	}
	if len(paths) == 0 {
		return nil, errors.Join(errs...)
	}
	rules := &clientcmd.ClientConfigLoadingRules{Precedence: paths}
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{})
	cfg, err := cc.ClientConfig()
	if clientcmd.IsEmptyConfig(err) {
		return nil, errors.New("invalid kubeconfig: empty, or no current-context")
	}
	if err != nil {
		return nil, fmt.Errorf("invalid kubeconfig: %w", err)
	}
	if cfg.Host == "" {
		return nil, errors.New("invalid kubeconfig: no server")
	}
	return cfg, nil
}

// readable says why p cannot be read as a kubeconfig file, in words a person can act on.
func readable(p string) error {
	f, err := os.Open(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%s does not exist", p)
		}
		if errors.Is(err, fs.ErrPermission) {
			return fmt.Errorf("%s is not readable by uid %d (permission denied)", p, os.Getuid())
		}
		return err
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.IsDir() {
		return fmt.Errorf("%s is a directory", p)
	}
	return nil
}
