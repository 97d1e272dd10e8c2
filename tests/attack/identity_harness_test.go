package attack

// Helpers of the trust and identity attacks (pins, downgrade, the cluster
// identity, the local endpoints). Every name here starts with "ident" so it
// cannot collide with the other attack tests' harness in this package.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/devplane"
	"github.com/pipeops/pipeops-vm-agent/internal/kube"
	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

const identToken = "attack-identity-install-token"

// identCert is a certificate with its key.
type identCert struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// identIssue makes a CA (ca) or a server certificate for 127.0.0.1, signed
// by parent or self-signed.
func identIssue(t *testing.T, name string, ca bool, parent *identCert) *identCert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	if ca {
		tmpl.IsCA, tmpl.BasicConstraintsValid, tmpl.KeyUsage = true, true, x509.KeyUsageCertSign|x509.KeyUsageDigitalSignature
	} else {
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
		tmpl.DNSNames = []string{"localhost"}
	}
	signer, signerKey := tmpl, key
	if parent != nil {
		signer, signerKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signerKey)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &identCert{cert: c, key: key}
}

// identChain is what a TLS server presents: leaf (whose key it holds) then extra.
func identChain(leaf *identCert, extra ...*identCert) tls.Certificate {
	chain := [][]byte{leaf.cert.Raw}
	for _, e := range extra {
		chain = append(chain, e.cert.Raw)
	}
	return tls.Certificate{Certificate: chain, PrivateKey: leaf.key}
}

func identPEMFile(t *testing.T, certs ...*identCert) string {
	t.Helper()
	var b []byte
	for _, c := range certs {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.cert.Raw})...)
	}
	p := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// identPin is the "sha256//<base64>" pin of c's public key.
func identPin(c *identCert) string {
	sum := sha256.Sum256(c.cert.RawSubjectPublicKeyInfo)
	return "sha256//" + base64.StdEncoding.EncodeToString(sum[:])
}

// identPKI is the setting of the pin attacks: the real control plane's
// certificate (pinned by the agent) and what an attacker can present in
// each trust mode.
type identPKI struct {
	mode string // "verification on" or "pin-only trust"
	// tls is the agent's pipeops.tls section (indented four spaces).
	tls string
	// real is the genuine chain; forged is the attacker's own certificate
	// with the genuine, pinned leaf appended.
	real, forged tls.Certificate
}

// identPKIs builds both modes:
//   - verification on: ca_file trusts the real CA and another CA (a public
//     CA that mis-issued, or a corporate proxy CA); the attacker has a leaf
//     from the other CA, so its chain verifies, and appends the pinned leaf.
//   - pin-only trust (insecure_skip_verify with pins): the attacker presents
//     any self-signed leaf and appends the pinned one.
func identPKIs(t *testing.T) []identPKI {
	t.Helper()
	realCA, otherCA := identIssue(t, "PipeOps CA", true, nil), identIssue(t, "another trusted CA", true, nil)
	realLeaf := identIssue(t, "api.pipeops.test", false, realCA)
	misIssued := identIssue(t, "api.pipeops.test", false, otherCA)
	selfSigned := identIssue(t, "api.pipeops.test", false, nil)
	pin := identPin(realLeaf)
	return []identPKI{
		{mode: "verification on",
			tls:  fmt.Sprintf("    ca_file: %s\n    pin_sha256: [%q]\n", identPEMFile(t, realCA, otherCA), pin),
			real: identChain(realLeaf, realCA), forged: identChain(misIssued, realLeaf)},
		{mode: "pin-only trust",
			tls:  fmt.Sprintf("    insecure_skip_verify: true\n    pin_sha256: [%q]\n", pin),
			real: identChain(realLeaf), forged: identChain(selfSigned, realLeaf)},
	}
}

// identTrap is a TLS server that records every handshake attempt and every
// HTTP request that got through (with its Authorization header): what an
// attacker in the middle would collect.
type identTrap struct {
	srv *httptest.Server
	mu  sync.Mutex
	// hellos counts forged ClientHellos; requests lists what came through a
	// forged connection: "METHOD PATH auth=<Authorization>".
	hellos   int
	requests []string
	next     http.Handler // serves the connections with the real chain
}

// identStartTrap serves next (nil: 502 to everything) over TLS. choose
// picks the chain per ClientHello and reports whether it is the forged one;
// requests over a forged connection are recorded.
func identStartTrap(t *testing.T, next http.Handler, choose func(*tls.ClientHelloInfo) (tls.Certificate, bool)) *identTrap {
	t.Helper()
	tr := &identTrap{next: next}
	forgedConns := map[string]bool{}
	tr.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tr.mu.Lock()
		forged := forgedConns[r.RemoteAddr]
		if forged {
			tr.requests = append(tr.requests, r.Method+" "+r.URL.Path+" auth="+r.Header.Get("Authorization"))
		}
		tr.mu.Unlock()
		if forged || tr.next == nil {
			http.Error(w, "intercepted", http.StatusBadGateway)
			return
		}
		tr.next.ServeHTTP(w, r)
	}))
	tr.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are the point
	tr.srv.TLS = &tls.Config{GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		cert, forged := choose(h)
		tr.mu.Lock()
		if forged {
			tr.hellos++
			forgedConns[h.Conn.RemoteAddr().String()] = true
		}
		tr.mu.Unlock()
		return &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}}, nil
	}}
	tr.srv.StartTLS()
	t.Cleanup(tr.srv.Close)
	return tr
}

func (tr *identTrap) url() string { return tr.srv.URL }

// seen returns the forged handshakes and the requests that got through.
func (tr *identTrap) seen() (int, []string) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.hellos, slices.Clone(tr.requests)
}

// identPlane is the reference control plane over TLS with the real chain.
func identPlane(t *testing.T, cert tls.Certificate, publicURL string) (*devplane.Server, *httptest.Server) {
	t.Helper()
	dp := devplane.New(devplane.Config{Tokens: []string{identToken}, PublicURL: publicURL})
	ts := httptest.NewUnstartedServer(dp.Handler())
	ts.Config.ErrorLog = log.New(io.Discard, "", 0)
	ts.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	ts.StartTLS()
	t.Cleanup(func() { dp.CloseAll(); ts.Close() })
	return dp, ts
}

// identPlainPlane is the reference control plane over plain HTTP.
func identPlainPlane(t *testing.T) (*devplane.Server, string) {
	t.Helper()
	dp := devplane.New(devplane.Config{Tokens: []string{identToken}})
	ts := httptest.NewServer(dp.Handler())
	t.Cleanup(func() { dp.CloseAll(); ts.Close() })
	return dp, ts.URL
}

// identAgent is the real pipeops-agent binary, with its own namespace for
// its ServiceAccount and RBAC on the shared cluster.
type identAgent struct {
	t       *testing.T
	bin     string
	dir     string
	cfg     string
	port    int
	socket  string
	proc    *testbin.Proc
	out     *testbin.Output
	names   kube.Names
	cluster *kubetest.Env
}

// identStartAgent writes the config (pipeops: extra lines indented two
// spaces; kubernetes: the test namespace as the agent's) and starts it.
func identStartAgent(t *testing.T, env *kubetest.Env, apiURL, pipeopsExtra, extra string) *identAgent {
	t.Helper()
	a := &identAgent{t: t, bin: testbin.Build(t, "pipeops-agent"), dir: testbin.ShortTempDir(t), out: &testbin.Output{}, cluster: env,
		names: kube.NamesFor(env.Namespace, "")}
	f := testbin.WriteAgentConfig(t, a.dir, testbin.AgentConfig{Name: "attack-identity", APIURL: apiURL, Kubeconfig: env.Kubeconfig,
		PipeOps: pipeopsExtra, Kubernetes: "  namespace: " + env.Namespace + "\n", Extra: extra})
	a.cfg, a.port, a.socket = f.Config, f.Port, f.Socket
	t.Cleanup(func() {
		a.stop()
		if t.Failed() {
			t.Logf("agent output:\n%s", a.out.String())
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = kube.RemoveIdentity(ctx, env.Client, a.names)
	})
	a.proc = testbin.StartTo(t, a.out, a.bin, testbin.AgentEnv(identToken), "run", "--config", a.cfg)
	return a
}

func (a *identAgent) stop() {
	if a.proc != nil {
		a.proc.Stop()
		a.proc = nil
	}
}

// status is pipeopsctl status --json (zero value while it does not answer).
func (a *identAgent) status() apitype.StatusResponse {
	var st apitype.StatusResponse
	out, err := exec.Command(testbin.Build(a.t, "pipeopsctl"), "--socket", a.socket, "status", "--json").Output()
	if err == nil {
		_ = json.Unmarshal(out, &st)
	}
	return st
}

func (a *identAgent) logs() string { return "agent output:\n" + a.out.String() }

// identRegistered waits until the agent registered with dp and returns the
// cluster id.
func identRegistered(t *testing.T, dp *devplane.Server, a *identAgent) string {
	t.Helper()
	var id string
	testbin.Eventually(t, 90*time.Second, "the agent registered with the control plane", func() bool {
		for _, c := range dp.Clusters() {
			if c.Registrations > 0 && dp.ServiceToken(c.ID) != "" {
				id = c.ID
				return true
			}
		}
		return false
	}, a.logs)
	return id
}

// identAsToken is a clientset that authenticates only with token, as the
// control plane does with k8s_service_token.
func identAsToken(t *testing.T, env *kubetest.Env, token string) kubernetes.Interface {
	t.Helper()
	cfg := &rest.Config{Host: env.Config.Host, TLSClientConfig: rest.TLSClientConfig{CAData: env.Config.CAData, CAFile: env.Config.CAFile},
		BearerToken: token, QPS: 100, Burst: 200}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}
