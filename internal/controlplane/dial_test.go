package controlplane

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"io"
	"log"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/config"
	"github.com/pipeops/pipeops-vm-agent/internal/devplane"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

func TestControllerURLKeepsSchemeSecurityAndBasePath(t *testing.T) {
	for _, tc := range []struct{ in, want, err string }{
		{in: "https://api.pipeops.io", want: "wss://api.pipeops.io/api/v1/clusters/agent/ws"},
		{in: "https://api.pipeops.io/", want: "wss://api.pipeops.io/api/v1/clusters/agent/ws"},
		{in: "http://127.0.0.1:8090", want: "ws://127.0.0.1:8090/api/v1/clusters/agent/ws"},
		{in: "wss://cp.example.com/base/", want: "wss://cp.example.com/base/api/v1/clusters/agent/ws"},
		{in: "ws://cp.example.com/a/b", want: "ws://cp.example.com/a/b/api/v1/clusters/agent/ws"},
		{in: "https://cp.example.com/p?x=1#f", want: "wss://cp.example.com/p/api/v1/clusters/agent/ws"},
		{in: "ftp://cp.example.com", err: "scheme"},
		{in: "api.pipeops.io", err: "absolute"},
	} {
		got, err := ControllerURL(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ControllerURL(%q) error = %v; want one mentioning %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ControllerURL(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestGatewayURLMapsSchemesAddsWsPathOnlyWhenEmptyAndSetsCapabilities(t *testing.T) {
	for _, tc := range []struct{ in, prefix string }{
		{"wss://gateway.pipeops.io/ws", "wss://gateway.pipeops.io/ws?"},
		{"https://gateway.pipeops.io", "wss://gateway.pipeops.io/ws?"},
		{"http://127.0.0.1:9/custom", "ws://127.0.0.1:9/custom?"},
		{"ws://gw?keep=1", "ws://gw/ws?"},
	} {
		got, err := GatewayURL("http://127.0.0.1:8090", tc.in, "uuid-1")
		if err != nil || !strings.HasPrefix(got, tc.prefix) {
			t.Errorf("GatewayURL(%q) = %q, %v; want prefix %q", tc.in, got, err, tc.prefix)
			continue
		}
		for _, p := range []string{"cluster_uuid=uuid-1", "supports_streaming=true", "supports_binary=true", "supports_websocket=true",
			"supports_yamux=true", "supports_response_streaming=true", "agent_version="} {
			if !strings.Contains(got, p) {
				t.Errorf("GatewayURL(%q) = %q lacks %s", tc.in, got, p)
			}
		}
	}
}

func TestAPlainTextGatewayIsRefusedWhenTheAPIURLUsesTLS(t *testing.T) {
	for _, tc := range []struct {
		api, gateway string
		refused      bool
	}{
		{"https://api.pipeops.io", "ws://gateway.pipeops.io/ws", true},
		{"https://api.pipeops.io", "http://gateway.pipeops.io", true},
		{"wss://api.pipeops.io", "ws://gateway.pipeops.io/ws", true},
		{"https://api.pipeops.io", "wss://gateway.pipeops.io/ws", false},
		{"https://api.pipeops.io", "https://gateway.pipeops.io", false},
		{"http://127.0.0.1:8090", "ws://127.0.0.1:8090/ws", false},
	} {
		_, err := GatewayURL(tc.api, tc.gateway, "uuid-1")
		if got := errors.Is(err, ErrDowngrade); got != tc.refused {
			t.Errorf("GatewayURL(%q, %q) error = %v; want refused=%v", tc.api, tc.gateway, err, tc.refused)
		}
		if tc.refused && (!strings.Contains(err.Error(), "gateway_ws_url") || !strings.Contains(err.Error(), "pipeops.api_url")) {
			t.Errorf("downgrade error %q does not name gateway_ws_url and pipeops.api_url", err)
		}
	}
}

// tlsPlane serves the devplane over TLS; clientCA non-nil requires client certificates.
func tlsPlane(t *testing.T, clientCA *x509.CertPool) (*httptest.Server, *devplane.Server, string) {
	t.Helper()
	srv := devplane.New(devplane.Config{Tokens: []string{testToken}})
	ts := httptest.NewUnstartedServer(srv.Handler())
	ts.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are the point of some cases
	if clientCA != nil {
		ts.TLS = &tls.Config{ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: clientCA}
	}
	ts.StartTLS()
	t.Cleanup(ts.Close)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ts.Certificate().Raw}), 0o600)
	return ts, srv, caFile
}

func TestTLSOptionsPinsAndClientCertificates(t *testing.T) {
	clientCert, clientKey, clientPool := makeClientCert(t)
	for _, tc := range []struct {
		name     string
		clientCA bool
		tweak    func(tl *config.TLS, ts *httptest.Server)
		wantErr  string // "" means it registers
	}{
		{name: "a matching pin connects", tweak: func(tl *config.TLS, ts *httptest.Server) {
			tl.PinSHA256 = []string{strings.Repeat("ab", 32), SPKIPin(ts.Certificate())}
		}},
		{name: "a pin mismatch is refused with a clear error", tweak: func(tl *config.TLS, ts *httptest.Server) {
			tl.PinSHA256 = []string{strings.Repeat("ab", 32)}
		}, wantErr: "does not match pipeops.tls.pin_sha256"},
		{name: "an untrusted certificate is refused", tweak: func(tl *config.TLS, ts *httptest.Server) { tl.CAFile = "" },
			wantErr: "certificate"},
		{name: "a client certificate is presented", clientCA: true, tweak: func(tl *config.TLS, ts *httptest.Server) {
			tl.CertFile, tl.KeyFile = clientCert, clientKey
		}},
		{name: "a server requiring a client certificate refuses none", clientCA: true, tweak: func(*config.TLS, *httptest.Server) {},
			wantErr: "connect to controller"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var pool *x509.CertPool
			if tc.clientCA {
				pool = clientPool
			}
			ts, srv, caFile := tlsPlane(t, pool)
			cfg := testConfig(ts.URL)
			cfg.PipeOps.TLS.CAFile = caFile
			tc.tweak(&cfg.PipeOps.TLS, ts)
			a := newAgent(t, cfg, nil, &fakeCluster{version: "v1.36.3", token: "t"}, nil)
			a.start(t)
			if tc.wantErr == "" {
				testbin.Eventually(t, 5*time.Second, "registration over TLS", func() bool {
					cs := srv.Clusters()
					return len(cs) == 1 && cs[0].Heartbeats > 0
				})
				return
			}
			var st apitype.StatusResponse
			testbin.Eventually(t, 5*time.Second, "a recorded error", func() bool { a.c.FillStatus(t.Context(), &st); return st.Link.LastError != "" })
			if !strings.Contains(st.Link.LastError, tc.wantErr) || len(srv.Clusters()) != 0 {
				t.Fatalf("last error = %q; want it to contain %q and no registration", st.Link.LastError, tc.wantErr)
			}
		})
	}
}

func TestUnusableTLSSettingsFailAtConstruction(t *testing.T) {
	for _, tc := range []struct {
		name string
		tl   config.TLS
		want string
	}{
		{"missing CA file", config.TLS{CAFile: "/nonexistent/ca.pem"}, "ca_file"},
		{"cert without key", config.TLS{CertFile: "/x.pem"}, "set together"},
		{"bad pin", config.TLS{PinSHA256: []string{"short"}}, "pin_sha256"},
	} {
		if _, err := tlsConfig(tc.tl); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v; want it to mention %q", tc.name, err, tc.want)
		}
	}
}

// makeClientCert writes a self-signed client certificate and key.
func makeClientCert(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "agent"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true, IsCA: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	c, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(c)
	return certFile, keyFile, pool
}

// TestAServerThatAcceptsUnofferedCompressionIsRefused: gorilla takes a
// permessage-deflate the server names even if the dialer never offered it,
// and its read limit counts compressed bytes, so such a server could send
// a message that inflates without bound. The agent hangs up instead.
func TestAServerThatAcceptsUnofferedCompressionIsRefused(t *testing.T) {
	got := make(chan string, 16) // what each connection sent after the handshake
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Sec-WebSocket-Extensions") != "" {
			t.Errorf("the agent offered %q; it offers no extension", r.Header.Get("Sec-WebSocket-Extensions"))
		}
		h := sha1.Sum([]byte(r.Header.Get("Sec-WebSocket-Key") + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
		c, buf, err := w.(http.Hijacker).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		buf.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " +
			base64.StdEncoding.EncodeToString(h[:]) + "\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n\r\n")
		buf.Flush()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		b, _ := io.ReadAll(c)
		got <- string(b)
	}))
	t.Cleanup(ts.Close)
	a := newAgent(t, testConfig(ts.URL), nil, &fakeCluster{version: "v1.36.3", token: "t"}, nil)
	a.start(t)
	testbin.Eventually(t, 10*time.Second, "the refusal is logged", func() bool {
		return strings.Contains(a.logs.String(), "accepted the WebSocket extension") && strings.Contains(a.logs.String(), "permessage-deflate")
	})
	a.stop()
	for {
		select {
		case b := <-got:
			if b != "" {
				t.Errorf("the agent sent %q on a connection with unoffered compression; want nothing", b)
			}
		default:
			return
		}
	}
}
