package controlplane

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/gorilla/websocket"

	"github.com/pipeops/pipeops-vm-agent/internal/config"
	"github.com/pipeops/pipeops-vm-agent/internal/version"
	"github.com/pipeops/pipeops-vm-agent/internal/wsconn"
)

// ControllerPath is appended to the api_url's base path (§2).
const ControllerPath = "/api/v1/clusters/agent/ws"

// defaultHandshakeTimeout bounds the WebSocket handshake (§2) when
// pipeops.timeout is unset.
const defaultHandshakeTimeout = 30 * time.Second

// ErrPinMismatch means the control plane's certificate matched none of the
// configured SPKI pins.
var ErrPinMismatch = errors.New("control plane certificate does not match pipeops.tls.pin_sha256")

// AuthError is a 401 or 403 answer to a WebSocket handshake (§8.6).
type AuthError struct {
	Status int
	Mode   string // controller or gateway
	Body   string
}

func (e *AuthError) Error() string {
	if e.Mode == ModeGateway {
		return fmt.Sprintf("gateway rejected the install token (HTTP %d); registering again through the controller", e.Status)
	}
	return fmt.Sprintf("control plane rejected the install token (HTTP %d): check pipeops.token or the token file, then restart the agent", e.Status)
}

// ControllerURL derives the controller WebSocket URL from api_url (§2,
// §13.18): https→wss, http→ws, ws/wss kept, the base path kept, no query.
func ControllerURL(apiURL string) (string, error) {
	u, err := url.Parse(strings.TrimSpace(apiURL))
	if err != nil || u.Host == "" {
		return "", fmt.Errorf("pipeops.api_url %q is not an absolute URL such as https://api.pipeops.io", apiURL)
	}
	switch u.Scheme {
	case "https", "wss":
		u.Scheme = "wss"
	case "http", "ws":
		u.Scheme = "ws"
	default:
		return "", fmt.Errorf("pipeops.api_url %q: scheme must be https, http, wss or ws", apiURL)
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + ControllerPath
	u.RawPath, u.RawQuery, u.Fragment = "", "", ""
	return u.String(), nil
}

// GatewayURL builds the gateway WebSocket URL from gateway_ws_url (§2):
// https→wss, http→ws, other schemes kept; path /ws only when empty; the
// capability query parameters set.
func GatewayURL(gatewayWSURL, clusterUUID string) (string, error) {
	u, err := url.Parse(strings.TrimSpace(gatewayWSURL))
	if err != nil || u.Host == "" {
		return "", fmt.Errorf("gateway_ws_url %q is not an absolute URL", gatewayWSURL)
	}
	switch u.Scheme {
	case "https":
		u.Scheme = "wss"
	case "http":
		u.Scheme = "ws"
	}
	if u.Path == "" {
		u.Path = "/ws"
	}
	q := u.Query()
	q.Set("cluster_uuid", clusterUUID)
	for _, k := range []string{"supports_streaming", "supports_binary", "supports_websocket", "supports_yamux", "supports_response_streaming"} {
		q.Set(k, "true")
	}
	q.Set("agent_version", version.Version)
	u.RawQuery = q.Encode()
	return u.String(), nil
}

// newDialer builds the WebSocket dialer: TLS ≥ 1.2 against the system roots
// plus ca_file, an optional client certificate, optional SPKI pins, and the
// proxy from HTTPS_PROXY/NO_PROXY. No compression, no subprotocol. The
// handshake is bounded by pipeops.timeout (default 30 s).
func newDialer(t config.TLS, handshake time.Duration) (*websocket.Dialer, error) {
	if handshake <= 0 {
		handshake = defaultHandshakeTimeout
	}
	tc, err := tlsConfig(t)
	if err != nil {
		return nil, err
	}
	return &websocket.Dialer{
		Proxy:             http.ProxyFromEnvironment,
		TLSClientConfig:   tc,
		HandshakeTimeout:  handshake,
		ReadBufferSize:    64 << 10, // 64 KiB on both ends: measured faster for yamux bulk transfer (issue 6)
		WriteBufferSize:   64 << 10,
		EnableCompression: false,
		// Wrapped below TLS (and below an HTTP CONNECT proxy's tunnel) so
		// the writer can coalesce frames into one write (wsconn).
		NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return wsconn.New(c), nil
		},
	}, nil
}

// TLSConfig is the link's TLS configuration (ca_file, client certificate,
// SPKI pins), for other clients of the same server such as the route REST calls.
func TLSConfig(t config.TLS) (*tls.Config, error) { return tlsConfig(t) }

func tlsConfig(t config.TLS) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: t.InsecureSkipVerify} //nolint:gosec // opt-in, documented
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("read pipeops.tls.ca_file: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("pipeops.tls.ca_file %s holds no PEM certificate", t.CAFile)
		}
		tc.RootCAs = pool
	}
	if (t.CertFile == "") != (t.KeyFile == "") {
		return nil, fmt.Errorf("pipeops.tls.cert_file and pipeops.tls.key_file must be set together")
	}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("load client certificate (pipeops.tls.cert_file/key_file): %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	if len(t.PinSHA256) > 0 {
		var pins [][]byte
		for _, p := range t.PinSHA256 {
			b, err := config.ParsePin(p)
			if err != nil {
				return nil, fmt.Errorf("pipeops.tls.pin_sha256 %q: %w", p, err)
			}
			pins = append(pins, b)
		}
		tc.VerifyConnection = func(cs tls.ConnectionState) error { return checkPins(cs.PeerCertificates, pins) }
	}
	return tc, nil
}

// checkPins accepts the connection when any certificate of the presented
// chain has a pinned SPKI hash.
func checkPins(chain []*x509.Certificate, pins [][]byte) error {
	var got []string
	for _, c := range chain {
		sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
		for _, p := range pins {
			if bytes.Equal(sum[:], p) {
				return nil
			}
		}
		got = append(got, "sha256//"+base64.StdEncoding.EncodeToString(sum[:]))
	}
	return fmt.Errorf("%w: the server presented %s; update the pin if the certificate was rotated, otherwise something is intercepting the connection",
		ErrPinMismatch, strings.Join(got, ", "))
}

// SPKIPin returns the "sha256//<base64>" pin of a certificate (tests, docs).
func SPKIPin(c *x509.Certificate) string {
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return "sha256//" + base64.StdEncoding.EncodeToString(sum[:])
}
