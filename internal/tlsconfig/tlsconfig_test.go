package tlsconfig

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// keyCert is a certificate with its key.
type keyCert struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// issue makes a certificate for 127.0.0.1 (or a CA when ca is set), signed
// by parent, or self-signed when parent is nil.
func issue(t *testing.T, name string, ca bool, parent *keyCert) *keyCert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	if ca {
		tmpl.IsCA, tmpl.BasicConstraintsValid, tmpl.KeyUsage = true, true, x509.KeyUsageCertSign|x509.KeyUsageDigitalSignature
	} else {
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
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
	return &keyCert{cert: c, key: key}
}

// serve answers one TLS handshake with chain (leaf key from chain[0]) and
// returns the client's handshake error.
func handshake(t *testing.T, client *tls.Config, leaf *keyCert, extra ...*keyCert) error {
	t.Helper()
	chain := [][]byte{leaf.cert.Raw}
	for _, e := range extra {
		chain = append(chain, e.cert.Raw)
	}
	srvConf := &tls.Config{Certificates: []tls.Certificate{{Certificate: chain, PrivateKey: leaf.key}}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_ = tls.Server(c, srvConf).Handshake()
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client = client.Clone()
	client.ServerName = "127.0.0.1"
	return tls.Client(conn, client).Handshake()
}

func writeCAs(t *testing.T, cas ...*keyCert) string {
	t.Helper()
	var buf []byte
	for _, c := range cas {
		buf = append(buf, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.cert.Raw})...)
	}
	p := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(p, buf, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestWithVerificationAPinMatchesOnlyTheVerifiedChain(t *testing.T) {
	realCA, otherCA := issue(t, "real CA", true, nil), issue(t, "other trusted CA", true, nil)
	real := issue(t, "api.pipeops.io", false, realCA)
	forged := issue(t, "api.pipeops.io", false, otherCA) // mis-issued by another trusted CA
	caFile := writeCAs(t, realCA, otherCA)
	for _, tc := range []struct {
		name   string
		pin    *keyCert
		leaf   *keyCert
		extra  []*keyCert
		refuse bool
	}{
		{"the pinned leaf itself passes", real, real, nil, false},
		{"the pinned CA in the verified chain passes", realCA, real, []*keyCert{realCA}, false},
		{"a forged leaf with the pinned leaf appended is refused", real, forged, []*keyCert{real}, true},
		{"a forged leaf with the pinned CA appended is refused", realCA, forged, []*keyCert{realCA}, true},
		{"a forged leaf alone is refused", real, forged, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := New(Options{CAFile: caFile, PinSHA256: []string{SPKIPin(tc.pin.cert)}})
			if err != nil {
				t.Fatal(err)
			}
			err = handshake(t, c, tc.leaf, tc.extra...)
			if tc.refuse != errors.Is(err, ErrPinMismatch) || !tc.refuse && err != nil {
				t.Fatalf("handshake error = %v; want refused by the pin = %v", err, tc.refuse)
			}
		})
	}
}

func TestPinOnlyTrustMatchesOnlyTheLeafTheServerHoldsTheKeyOf(t *testing.T) {
	real := issue(t, "api.pipeops.io", false, nil)
	attacker := issue(t, "api.pipeops.io", false, nil)
	c, err := New(Options{InsecureSkipVerify: true, PinSHA256: []string{SPKIPin(real.cert)}})
	if err != nil {
		t.Fatal(err)
	}
	if err := handshake(t, c, real); err != nil {
		t.Fatalf("the pinned server was refused: %v", err)
	}
	err = handshake(t, c, attacker, real)
	var pe *PinError
	if !errors.As(err, &pe) || !pe.PinOnly || !strings.Contains(err.Error(), SPKIPin(attacker.cert)) {
		t.Fatalf("attacker leaf with the pinned certificate appended: error = %v; want a pin-only PinError naming the attacker's key", err)
	}
}

func TestTheCAFileIsAddedToTheSystemRootsNotInPlaceOfThem(t *testing.T) {
	ca := issue(t, "corporate proxy CA", true, nil)
	c, err := New(Options{CAFile: writeCAs(t, ca)})
	if err != nil {
		t.Fatal(err)
	}
	want, err := x509.SystemCertPool()
	if err != nil {
		t.Fatal("no system pool on this host:", err)
	}
	want.AddCert(ca.cert)
	if !c.RootCAs.Equal(want) {
		t.Fatal("RootCAs is not the system pool plus ca_file")
	}
}

func TestUnusableSettingsNameTheirKey(t *testing.T) {
	for _, tc := range []struct {
		o    Options
		want string
	}{
		{Options{CAFile: "/nonexistent/ca.pem"}, "pipeops.tls.ca_file"},
		{Options{CertFile: "/x.pem"}, "set together"},
		{Options{PinSHA256: []string{"short"}}, "pipeops.tls.pin_sha256"},
	} {
		if _, err := New(tc.o); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) error = %v; want it to mention %q", tc.o, err, tc.want)
		}
	}
}

func TestParsePinAcceptsBase64AndHex(t *testing.T) {
	for _, p := range []string{"sha256//47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=", "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
		strings.Repeat("ab", 32), strings.TrimSuffix(strings.Repeat("ab:", 32), ":")} {
		if _, err := ParsePin(p); err != nil {
			t.Errorf("ParsePin(%q) = %v", p, err)
		}
	}
	if _, err := ParsePin("short"); err == nil {
		t.Error("ParsePin(short) accepted")
	}
}
