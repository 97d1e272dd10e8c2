package routesync

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"log"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"

	"github.com/pipeops/pipeops-vm-agent/internal/devplane"
	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

// counter reads one operation's series of a route sync counter (-1: none).
func counter(t *testing.T, reg *prometheus.Registry, name, op string) float64 {
	t.Helper()
	return testbin.Metric(t, reg, name, "operation", op)
}

func TestTheRESTCallsTrustTheGivenTLSConfigurationAndCountInTheGivenRegistry(t *testing.T) {
	env := kubetest.Cluster(t)
	dp := devplane.New(devplane.Config{Tokens: []string{testToken}})
	srv := httptest.NewUnstartedServer(dp.Handler())
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshakes are the point
	srv.StartTLS()
	defer srv.Close()
	fixture(t, env, corev1.ServiceTypeClusterIP)
	applyIngress(t, env, ingressSpec{name: "web", managed: true, host: "web.example.com", paths: []string{"/"}})
	opt := testOptions(env.Client, env.Namespace, &controlPlane{dp: dp})
	opt.APIURL = srv.URL

	// The system roots do not know the test server's certificate.
	untrusted := prometheus.NewRegistry()
	opt.Registerer = untrusted
	s := startSyncer(t, opt)
	waitFor(t, converge, "a failed sync to be reported", func() bool { return s.Status().LastError != "" })
	if st := s.Status(); !strings.Contains(st.LastError, "certificate") {
		t.Fatalf("Status().LastError = %q; want a certificate error", st.LastError)
	}
	if f := counter(t, untrusted, "pipeops_agent_gateway_route_sync_failures_total", OpSync); f < 1 {
		t.Fatalf("sync failures = %v; want the failed attempts counted", f)
	}
	s.stop()
	if len(dp.Routes(testCluster)) != 0 {
		t.Fatal("routes registered through a connection the syncer should not have trusted")
	}

	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	trusted := prometheus.NewRegistry()
	opt.Registerer, opt.TLS = trusted, &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	s = startSyncer(t, opt)
	waitFor(t, converge, "the route to be registered", func() bool { return len(dp.Routes(testCluster)) == 1 })
	waitFor(t, converge, "the good sync to be recorded", func() bool { return s.Status().LastSyncResult == "ok" })
	if a, f := counter(t, trusted, "pipeops_agent_gateway_route_sync_attempts_total", OpSync),
		counter(t, trusted, "pipeops_agent_gateway_route_sync_failures_total", OpSync); a < 1 || f != 0 {
		t.Fatalf("sync attempts %v, failures %v; want at least 1 attempt and no failure", a, f)
	}
	if u := counter(t, trusted, "pipeops_agent_gateway_route_sync_failures_total", OpUnregister); u != 0 {
		t.Fatalf("unregister failures = %v; want the series at 0 from the start", u)
	}
}

func TestASecondSyncerInOneRegistryIsAnError(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := New(Options{Registerer: reg}); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Options{Registerer: reg}); err == nil {
		t.Fatal("New registered the route sync metrics twice without an error")
	}
}
