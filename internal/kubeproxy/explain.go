package kubeproxy

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"regexp"
	"strings"
	"syscall"

	"github.com/pipeops/pipeops-vm-agent/internal/egress"
)

// explainTransport turns a failed backend call into a message that says
// what to do.
func explainTransport(err error, t *target) error {
	var (
		unknownAuthority x509.UnknownAuthorityError
		hostnameErr      x509.HostnameError
		certInvalid      x509.CertificateInvalidError
		dnsErr           *net.DNSError
		netErr           net.Error
		refused          *egress.RefusedError
	)
	switch {
	case errors.As(err, &refused):
		return fmt.Errorf("%s: %w", t.what, refused)
	case errors.Is(err, syscall.ECONNREFUSED):
		if t.kube {
			return fmt.Errorf("%s unreachable (connection refused): check that kube-apiserver is running on this host and that the agent's kubeconfig points at it: %w", t.what, err)
		}
		return fmt.Errorf("%s unreachable (connection refused): check that the Service has ready endpoints: %w", t.what, err)
	case errors.As(err, &unknownAuthority), errors.As(err, &hostnameErr), errors.As(err, &certInvalid):
		return fmt.Errorf("TLS verification of %s failed: check the CA in the agent's kubeconfig: %w", t.what, err)
	case errors.As(err, &dnsErr):
		return fmt.Errorf("%s unreachable (DNS lookup failed): %w", t.what, err)
	case errors.As(err, &netErr) && netErr.Timeout():
		return fmt.Errorf("%s did not answer in time (connect timeout %s): %w", t.what, dialTimeout, err)
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return fmt.Errorf("%s closed the connection: %w", t.what, err)
	}
	return fmt.Errorf("%s: %w", t.what, err)
}

// forbiddenRE parses the API server's RBAC denial message, e.g.
// `pods "web-0" is forbidden: User "system:serviceaccount:pipeops-system:pipeops-agent"
// cannot create resource "pods/exec" in API group "" in the namespace "app"`.
var forbiddenRE = regexp.MustCompile(`User "([^"]*)" cannot (\S+) resource "([^"]*)" in API group "([^"]*)"(?: in the namespace "([^"]*)"| at the cluster scope)?`)

// apiStatus is the subset of metav1.Status the messages need.
type apiStatus struct {
	Kind    string `json:"kind"`
	Message string `json:"message"`
	Reason  string `json:"reason"`
	Code    int    `json:"code"`
}

// explainStatus describes a non-success API answer to a relay dial (which
// has no other way to report it): a 403 names the missing RBAC verb and
// resource and says how to grant it.
func explainStatus(status int, body []byte, what string) string {
	var st apiStatus
	_ = json.Unmarshal(body, &st)
	msg := strings.TrimSpace(st.Message)
	if msg == "" {
		msg = strings.TrimSpace(string(body))
	}
	if status == http.StatusForbidden {
		if m := forbiddenRE.FindStringSubmatch(msg); m != nil {
			scope := "cluster-wide"
			if m[5] != "" {
				scope = fmt.Sprintf("in namespace %q", m[5])
			}
			group := m[4]
			if group == "" {
				group = `"" (core)`
			} else {
				group = fmt.Sprintf("%q", group)
			}
			// The agent's own identity reads cluster-wide through its
			// ClusterRole and writes through the workload role bound in each
			// namespace that is not protected (docs/kubernetes.md).
			where := "its ClusterRole"
			if m[5] != "" {
				where = fmt.Sprintf("the workload ClusterRole bound in namespace %q (namespaces listed in kubernetes.protected_namespaces stay read-only by design)", m[5])
			}
			return fmt.Sprintf("forbidden (403): %s lacks RBAC permission to %s %q (API group %s) %s; grant verb %q on resource %q in %s, or send an Authorization header for an identity that has it (%s)",
				m[1], m[2], m[3], group, scope, m[2], m[3], where, msg)
		}
		return fmt.Sprintf("forbidden (403) by %s: %s; check the RBAC rules of the identity used (the agent's ServiceAccount, or the Authorization header sent)", what, msg)
	}
	if status == http.StatusUnauthorized {
		return fmt.Sprintf("unauthorized (401) by %s: the token was rejected; re-register the agent or send a valid Authorization header (%s)", what, msg)
	}
	if msg == "" {
		return fmt.Sprintf("%s answered %d %s", what, status, http.StatusText(status))
	}
	return fmt.Sprintf("%s answered %d %s: %s", what, status, http.StatusText(status), msg)
}
