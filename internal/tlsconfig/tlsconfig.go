// Package tlsconfig builds the one TLS client configuration for every
// connection to the PipeOps control plane: the controller and gateway
// WebSockets (controlplane), the route REST calls (routesync, wired by the
// daemon) and `pipeopsctl doctor`, so doctor reports what the agent does.
// It is a leaf (standard library only) because pipeopsctl may not link
// client-go, yamux or gorilla/websocket.
//
// Trust, in order:
//   - verification on (the default): the server's chain must verify against
//     the system roots plus pipeops.tls.ca_file (appended, never replacing
//     the system pool); with pins, a pin must match a certificate of a chain
//     that verified. Certificates the server merely sends along are never
//     matched, so an attacker's certificate with the pinned one appended does
//     not pass.
//   - insecure_skip_verify with pins ("pin-only trust"): no chain building;
//     the pin must match the leaf's public key, the one the server proved it
//     holds in the handshake.
//   - insecure_skip_verify without pins: anything is trusted. Never in
//     production; the agent and doctor warn about it.
package tlsconfig

import (
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
)

// ErrPinMismatch means the server's certificate matched none of the
// configured SPKI pins.
var ErrPinMismatch = errors.New("control plane certificate does not match pipeops.tls.pin_sha256")

// Options are the pipeops.tls settings (config.TLS).
type Options struct {
	CAFile             string
	CertFile, KeyFile  string
	PinSHA256          []string
	InsecureSkipVerify bool
}

// New builds the client configuration: TLS 1.2 or later, the system roots
// plus CAFile, an optional client certificate, and the pin check described
// in the package comment. It fails on unusable settings, naming the key.
func New(o Options) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: o.InsecureSkipVerify} //nolint:gosec // opt-in, documented, warned about
	if o.CAFile != "" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("read pipeops.tls.ca_file: %w", err)
		}
		// Appended to the system pool (protocol.md §2): an extra CA for a
		// TLS-inspecting proxy must not make the public CAs untrusted.
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("pipeops.tls.ca_file %s holds no PEM certificate", o.CAFile)
		}
		tc.RootCAs = pool
	}
	if (o.CertFile == "") != (o.KeyFile == "") {
		return nil, errors.New("pipeops.tls.cert_file and pipeops.tls.key_file must be set together")
	}
	if o.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("load client certificate (pipeops.tls.cert_file/key_file): %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	if len(o.PinSHA256) > 0 {
		pins := make([][]byte, 0, len(o.PinSHA256))
		for _, p := range o.PinSHA256 {
			b, err := ParsePin(p)
			if err != nil {
				return nil, fmt.Errorf("pipeops.tls.pin_sha256 %q: %w", p, err)
			}
			pins = append(pins, b)
		}
		skip := o.InsecureSkipVerify
		tc.VerifyConnection = func(cs tls.ConnectionState) error { return checkPins(cs, pins, skip) }
	}
	return tc, nil
}

// checkPins applies the pins to what the handshake proved: the verified
// chains when verification is on, else the leaf alone. cs.PeerCertificates
// beyond the leaf are whatever the server chose to send and prove nothing.
func checkPins(cs tls.ConnectionState, pins [][]byte, pinOnly bool) error {
	var candidates []*x509.Certificate
	switch {
	case pinOnly && len(cs.PeerCertificates) > 0:
		candidates = cs.PeerCertificates[:1]
	case !pinOnly:
		for _, chain := range cs.VerifiedChains {
			candidates = append(candidates, chain...)
		}
	}
	for _, c := range candidates {
		sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
		for _, p := range pins {
			if subtle.ConstantTimeCompare(sum[:], p) == 1 {
				return nil
			}
		}
	}
	e := &PinError{Presented: "no certificate", PinOnly: pinOnly}
	if len(cs.PeerCertificates) > 0 {
		e.Presented = "a certificate for " + certName(cs.PeerCertificates[0]) + " with key " + SPKIPin(cs.PeerCertificates[0])
	}
	return e
}

// PinError is a handshake refused by the pins. It wraps ErrPinMismatch.
type PinError struct {
	// Presented describes the server's own certificate and its key's pin.
	Presented string
	// PinOnly is true under pin-only trust (insecure_skip_verify with pins),
	// where only the leaf is matched; otherwise the verified chain is.
	PinOnly bool
}

func (e *PinError) Error() string {
	scope := "the verified chain"
	if e.PinOnly {
		scope = "the server's own certificate (pin-only trust: insecure_skip_verify with pins)"
	}
	return fmt.Sprintf("%v: no pin matches %s; the server presented %s. Update the pin if the certificate was rotated; otherwise something is intercepting the connection",
		ErrPinMismatch, scope, e.Presented)
}

func (e *PinError) Unwrap() error { return ErrPinMismatch }

// ParsePin decodes an SPKI SHA-256 pin given as base64 (as in HPKP and
// curl's --pinnedpubkey "sha256//…") or hex (colons allowed).
func ParsePin(p string) ([]byte, error) {
	s := strings.TrimPrefix(strings.TrimSpace(p), "sha256//")
	if b, err := hex.DecodeString(strings.ReplaceAll(s, ":", "")); err == nil && len(b) == sha256.Size {
		return b, nil
	}
	if b, err := base64.StdEncoding.DecodeString(s); err == nil && len(b) == sha256.Size {
		return b, nil
	}
	return nil, errors.New("want the SHA-256 of the server's public key (SPKI), base64 or hex")
}

// SPKIPin returns the "sha256//<base64>" pin of a certificate's public key.
func SPKIPin(c *x509.Certificate) string {
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return "sha256//" + base64.StdEncoding.EncodeToString(sum[:])
}

// certName is the name a person recognises: the CN, else the first SAN.
func certName(c *x509.Certificate) string {
	switch {
	case c.Subject.CommonName != "":
		return c.Subject.CommonName
	case len(c.DNSNames) > 0:
		return c.DNSNames[0]
	case len(c.IPAddresses) > 0:
		return c.IPAddresses[0].String()
	}
	return "an unnamed subject"
}
