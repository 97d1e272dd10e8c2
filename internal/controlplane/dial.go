package controlplane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/gorilla/websocket"

	"github.com/pipeops/pipeops-vm-agent/internal/config"
	"github.com/pipeops/pipeops-vm-agent/internal/tlsconfig"
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
var ErrPinMismatch = tlsconfig.ErrPinMismatch

// ErrDowngrade means the control plane handed out a plain-text gateway URL
// although pipeops.api_url uses TLS.
var ErrDowngrade = errors.New("refusing to downgrade the control-plane link to plain text")

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
// capability query parameters set. A plain-text gateway (ws, http) handed
// out while apiURL uses TLS is refused with ErrDowngrade: the install token
// would cross the network in clear text, and a control plane reached over
// TLS has no reason to send one.
func GatewayURL(apiURL, gatewayWSURL, clusterUUID string) (string, error) {
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
	if u.Scheme != "wss" && secureURL(apiURL) {
		return "", fmt.Errorf("%w: the control plane handed out gateway_ws_url %s while pipeops.api_url %s uses TLS; "+
			"the agent will not send its token without TLS. Ask PipeOps support to fix the gateway URL, or check for something rewriting the control plane's answers",
			ErrDowngrade, redactURL(u.String()), apiURL)
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

// secureURL reports whether an api_url uses TLS (https or wss).
func secureURL(apiURL string) bool {
	u, err := url.Parse(strings.TrimSpace(apiURL))
	return err == nil && (u.Scheme == "https" || u.Scheme == "wss")
}

// newDialer builds the WebSocket dialer: the shared TLS configuration
// (tlsconfig: TLS ≥ 1.2, system roots plus ca_file, client certificate, SPKI
// pins matched against what verified), and the
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
		Proxy:            http.ProxyFromEnvironment,
		TLSClientConfig:  tc,
		HandshakeTimeout: handshake,
		ReadBufferSize:   64 << 10, // 64 KiB on both ends: measured faster for yamux bulk transfer (issue 6)
		// One bulk yamux frame (256 KiB with its header, tunnel's frameMax)
		// fits one WebSocket frame: masked in one pass, written in one syscall.
		WriteBufferSize:   256<<10 + 64,
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

func tlsConfig(t config.TLS) (*tls.Config, error) { return tlsconfig.New(t.Options()) }

// SPKIPin returns the "sha256//<base64>" pin of a certificate (tests, docs).
func SPKIPin(c *x509.Certificate) string { return tlsconfig.SPKIPin(c) }
