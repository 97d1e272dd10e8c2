// Package link tests the control-plane link end to end: the real
// pipeops-agent binary against the real pipeops-devplane binary and a real
// kube-apiserver (internal/kubetest). Tests run serially: every agent
// bootstraps the same cluster-wide ServiceAccount and RBAC.
package link

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/devplane"
	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

func TestMain(m *testing.M) { kubetest.Main(m) }

func heartbeatingOnGateway(p *devplaneProc, minBeats int) func() bool {
	return func() bool {
		c := p.only()
		return c.Connected && c.Mode == devplane.KindGateway && c.Heartbeats >= minBeats
	}
}

func TestTheAgentRegistersAndARestartResumesWithoutRegistering(t *testing.T) {
	env := kubetest.Cluster(t)
	dp := startDevplane(t)
	a := newAgent(t, dp.url(), env.Kubeconfig, "")
	a.start()
	testbin.Eventually(t, 60*time.Second, "registered and heartbeating on the gateway", heartbeatingOnGateway(dp, 1))
	first := dp.only()
	hb := first.Heartbeat()
	if first.Registrations != 1 || first.K8sVersion == "" || hb.Metadata.K8sVersion != first.K8sVersion || hb.Metadata.K8sNodes < 0 ||
		first.AgentVersion != "0.0.0-e2e" || first.GatewayQuery["agent_version"] != "0.0.0-e2e" {
		t.Fatalf("first registration = %+v, heartbeat %+v", first, hb)
	}
	testbin.Eventually(t, 10*time.Second, "pipeopsctl status shows the link", func() bool {
		st, err := a.status()
		return err == nil && st.Ready && st.Link.State == "connected" && st.Link.Mode == "gateway" && st.ClusterID == first.ID &&
			!st.Link.LastHeartbeat.IsZero()
	})

	a.stop()
	testbin.Eventually(t, 5*time.Second, "the agent closed its link with 1000", func() bool {
		c := dp.only()
		return !c.Connected && c.LastCloseCode == 1000
	})
	before := dp.only().Heartbeats
	a.start()
	testbin.Eventually(t, 60*time.Second, "heartbeats after the restart", heartbeatingOnGateway(dp, before+1))
	if c := dp.only(); c.Registrations != 1 || c.ID != first.ID {
		t.Fatalf("after restart: registrations %d, id %s; want 1 and %s", c.Registrations, c.ID, first.ID)
	}
}

func TestTheAgentSurvivesTwentyControlPlaneRestartsWithFlatGoroutines(t *testing.T) {
	// Long by design (about 20 × 2 s): each cycle waits for a re-registration
	// and two heartbeats, so the backoff resets as it would in production.
	env := kubetest.Cluster(t)
	dp := startDevplane(t)
	a := newAgent(t, dp.url(), env.Kubeconfig, "")
	a.start()
	testbin.Eventually(t, 60*time.Second, "first heartbeat", heartbeatingOnGateway(dp, 1))
	id := dp.only().ID
	// Bound per cycle: the largest jittered delay (max_interval 1 s × 1.25)
	// plus a registration round trip; generous for a shared CI box.
	const bound = 1250*time.Millisecond + 2*time.Second
	var baseline int
	for i := 0; i < 20; i++ {
		dp.kill()
		testbin.Eventually(t, 10*time.Second, "the agent noticed the devplane gone", func() bool {
			st, err := a.status()
			return err == nil && st.Link.State != apitype.LinkConnected
		})
		dp.start()
		back := time.Now()
		// The restarted devplane forgot the cluster: the gateway answers
		// "cluster not found" and the agent registers again, same id.
		testbin.Eventually(t, bound, "re-registered and heartbeating", heartbeatingOnGateway(dp, 1))
		took := time.Since(back)
		if c := dp.only(); c.ID != id || c.Registrations != 1 {
			t.Fatalf("cycle %d: cluster %+v; want id %s registered once since the devplane restart", i, c, id)
		}
		t.Logf("cycle %d: re-registered and heartbeating %s after the devplane came back", i, took.Round(time.Millisecond))
		if took > 1500*time.Millisecond && os.Getenv("LINK_TEST_VERBOSE") != "" {
			out := a.out.String()
			t.Logf("slow cycle, agent log tail:\n%s", out[max(0, len(out)-3000):])
		}
		// A second heartbeat a heartbeat interval later: the link stayed up
		// long enough for the backoff to reset, as in production.
		testbin.Eventually(t, 3*time.Second, "a second heartbeat", heartbeatingOnGateway(dp, 2))
		if i == 1 {
			baseline = a.goroutines()
		}
	}
	// Goroutines settle within a few seconds of the last reconnect.
	var last int
	testbin.Eventually(t, 10*time.Second, "goroutines back to the baseline", func() bool {
		last = a.goroutines()
		return last > 0 && last <= baseline+5
	})
	t.Logf("goroutines: %d after the second cycle, %d after the twentieth", baseline, last)
}

func TestAGateway401LeadsToRegistrationThroughTheControllerAndAWorkingSession(t *testing.T) {
	env := kubetest.Cluster(t)
	dp := startDevplane(t)
	a := newAgent(t, dp.url(), env.Kubeconfig, "")
	a.start()
	testbin.Eventually(t, 60*time.Second, "first heartbeat", heartbeatingOnGateway(dp, 1))
	dp.admin("PUT", "/admin/faults", `{"gateway_status":401,"times":1}`).Body.Close()
	dp.admin("POST", "/admin/drop", "").Body.Close()
	testbin.Eventually(t, 15*time.Second, "a second registration and a working gateway session", func() bool {
		c := dp.only()
		return c.Registrations == 2 && c.Connected && c.Mode == devplane.KindGateway
	})
	beats := dp.only().Heartbeats
	testbin.Eventually(t, 10*time.Second, "heartbeats continue", heartbeatingOnGateway(dp, beats+1))
}

func TestAPinMismatchIsRefusedWithAClearError(t *testing.T) {
	env := kubetest.Cluster(t)
	dir := t.TempDir()
	cert, key := writeServerCert(t, dir, "127.0.0.1")
	dp := startDevplane(t, "--tls-cert", cert, "--tls-key", key)
	pin := "sha256//" + strings.Repeat("A", 43) + "="
	a := newAgent(t, dp.url(), env.Kubeconfig, "  tls:\n    ca_file: "+cert+"\n    pin_sha256: [\""+pin+"\"]\n")
	a.start()
	testbin.Eventually(t, 60*time.Second, "the pin error in the status", func() bool {
		st, err := a.status()
		return err == nil && strings.Contains(st.Link.LastError, "does not match pipeops.tls.pin_sha256") && !st.Ready
	})
	if !strings.Contains(a.out.String(), "pin_sha256") {
		t.Fatal("the agent log does not name pipeops.tls.pin_sha256")
	}
	if len(dp.clusters()) != 0 {
		t.Fatal("the agent registered despite the pin mismatch")
	}
}

// writeServerCert writes a self-signed certificate for ip.
func writeServerCert(t *testing.T, dir, ip string) (certFile, keyFile string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "devplane"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP(ip)}, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, BasicConstraintsValid: true, IsCA: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(k)
	certFile, keyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	return certFile, keyFile
}
