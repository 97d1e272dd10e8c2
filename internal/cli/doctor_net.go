package cli

import (
	"context"
	"crypto/rand"
	"crypto/sha1" //nolint:gosec // RFC 6455 defines Sec-WebSocket-Accept with SHA-1
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"golang.org/x/net/http/httpproxy"

	"github.com/pipeops/pipeops-vm-agent/internal/config"
	"github.com/pipeops/pipeops-vm-agent/internal/tlsconfig"
)

// wsPath is the controller WebSocket (protocol.md §2).
const wsPath = "/api/v1/clusters/agent/ws"

// Clock skew thresholds: tokens and certificates tolerate little.
const (
	skewWarn = 30 * time.Second
	skewFail = 5 * time.Minute
)

// checkNetwork walks DNS → TCP → TLS (CA and pin) → clock → WebSocket
// upgrade toward pipeops.api_url, through the proxy the agent would use.
// A failing step skips the ones after it.
func checkNetwork(ctx context.Context, e *env, d doctorDeps, cfg *config.Config) []check {
	u, err := url.Parse(cfg.PipeOps.APIURL)
	if err != nil || u.Host == "" {
		return []check{{levelFail, "api_url", fmt.Sprintf("%q is not a URL", cfg.PipeOps.APIURL), "set pipeops.api_url"}}
	}
	secure := u.Scheme == "https" || u.Scheme == "wss"
	httpURL := *u
	httpURL.Scheme = map[bool]string{true: "https", false: "http"}[secure]
	host, port := u.Hostname(), u.Port()
	if port == "" {
		port = map[bool]string{true: "443", false: "80"}[secure]
	}
	addr := net.JoinHostPort(host, port)

	proxyFn := agentProxy(e, d)
	proxyURL, perr := proxyFn(&httpURL)
	via := ""
	if perr != nil {
		return []check{{levelFail, "proxy", perr.Error(), "fix HTTPS_PROXY in " + d.defaultsFile}}
	}
	if proxyURL != nil {
		via = " via proxy " + proxyURL.Redacted()
	}
	var out []check

	// DNS: with a proxy, the proxy resolves, so a local failure is only a warning.
	dctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	if net.ParseIP(host) != nil {
		out = append(out, check{levelOK, "dns", host + " is an IP address: no lookup needed", ""})
	} else {
		ips, err := net.DefaultResolver.LookupHost(dctx, host)
		switch {
		case err != nil && proxyURL != nil:
			out = append(out, check{levelWarn, "dns", host + " does not resolve here (the proxy resolves it): " + err.Error(), ""})
		case err != nil:
			return append(out, check{levelFail, "dns", "cannot resolve " + host + ": " + err.Error(), "check /etc/resolv.conf and the host's DNS server"})
		default:
			out = append(out, check{levelOK, "dns", host + " → " + strings.Join(ips, ", "), ""})
		}
	}

	// TCP to the first hop.
	hop := addr
	if proxyURL != nil {
		hop = proxyURL.Host
		if proxyURL.Port() == "" {
			hop = net.JoinHostPort(proxyURL.Hostname(), map[bool]string{true: "443", false: "80"}[proxyURL.Scheme == "https"])
		}
	}
	conn, err := (&net.Dialer{Timeout: d.timeout}).DialContext(dctx, "tcp", hop)
	if err != nil {
		return append(out, check{levelFail, "tcp", "cannot connect to " + hop + ": " + err.Error(),
			"allow outbound TCP to " + hop + " (firewall, security group)"})
	}
	conn.Close()
	out = append(out, check{levelOK, "tcp", "connected to " + hop, ""})

	// The agent's own builder: doctor trusts exactly what the agent trusts.
	tlsConf, err := tlsconfig.New(cfg.PipeOps.TLS.Options())
	if err != nil {
		return append(out, check{levelFail, "tls", err.Error(), "fix pipeops.tls in the configuration"})
	}
	tr := &http.Transport{Proxy: func(r *http.Request) (*url.URL, error) { return proxyFn(r.URL) }, TLSClientConfig: tlsConf, TLSHandshakeTimeout: d.timeout, ResponseHeaderTimeout: d.timeout}
	defer tr.CloseIdleConnections()
	// No Client.Timeout: it would hide the 101 body's Write; contexts bound each request.
	client := &http.Client{Transport: tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

	// TLS and clock: one plain request; any HTTP status will do.
	rctx, rcancel := context.WithTimeout(ctx, d.timeout)
	defer rcancel()
	req, _ := http.NewRequestWithContext(rctx, http.MethodGet, httpURL.String(), nil)
	resp, err := client.Do(req)
	if err != nil {
		return append(out, tlsFailure(err, httpURL.Host, via))
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if secure {
		out = append(out, tlsOK(resp.TLS, cfg.PipeOps.TLS, via))
	}
	out = append(out, clockCheck(e.now(), resp.Header.Get("Date")))

	// WebSocket upgrade on the controller path, with the token the agent sends.
	wctx, wcancel := context.WithTimeout(ctx, d.timeout)
	defer wcancel()
	out = append(out, wsCheck(wctx, client, httpURL, cfg.PipeOps.Token.Reveal(), via))
	return out
}

// agentProxy is http.ProxyFromEnvironment over the agent's environment:
// /etc/default/pipeops-agent first (what systemd hands the unit), then ours.
func agentProxy(e *env, d doctorDeps) func(*url.URL) (*url.URL, error) {
	kv := readDefaults(d.defaultsFile)
	get := func(names ...string) string {
		for _, n := range names {
			if v := kv[n]; v != "" {
				return v
			}
		}
		for _, n := range names {
			if v := e.getenv(n); v != "" {
				return v
			}
		}
		return ""
	}
	pc := &httpproxy.Config{
		HTTPProxy: get("HTTP_PROXY", "http_proxy"), HTTPSProxy: get("HTTPS_PROXY", "https_proxy"), NoProxy: get("NO_PROXY", "no_proxy"),
	}
	f := pc.ProxyFunc()
	return func(u *url.URL) (*url.URL, error) { return f(u) }
}

func tlsFailure(err error, host, via string) check {
	var pe *tlsconfig.PinError
	var ua x509.UnknownAuthorityError
	var hn x509.HostnameError
	var ci x509.CertificateInvalidError
	switch {
	case errors.As(err, &pe):
		return check{levelFail, "tls", "pin mismatch for " + host + via + ": the server presented " + pe.Presented,
			"update pipeops.tls.pin_sha256, or find out who intercepts the connection"}
	case errors.As(err, &ua):
		return check{levelFail, "tls", "certificate of " + host + via + " is signed by an unknown authority",
			"set pipeops.tls.ca_file to the CA that signed it (a TLS-inspecting proxy needs its CA there)"}
	case errors.As(err, &hn):
		return check{levelFail, "tls", "certificate does not name " + hn.Host, "check pipeops.api_url"}
	case errors.As(err, &ci):
		return check{levelFail, "tls", "invalid certificate: " + ci.Error(), "check the host's clock and the server's certificate"}
	}
	return check{levelFail, "tls", "request to " + host + via + " failed: " + err.Error(), "check the proxy and the URL"}
}

func tlsOK(cs *tls.ConnectionState, t config.TLS, via string) check {
	if cs == nil {
		return check{levelFail, "tls", "no TLS on an https URL" + via, ""}
	}
	detail := fmt.Sprintf("%s%s", tls.VersionName(cs.Version), via)
	if len(cs.PeerCertificates) > 0 {
		detail = fmt.Sprintf("%s, certificate for %s%s", tls.VersionName(cs.Version), certName(cs.PeerCertificates[0]), via)
	}
	switch {
	case t.InsecureSkipVerify:
		return check{levelWarn, "tls", detail + ", but certificate checks are OFF (insecure_skip_verify)", "set pipeops.tls.ca_file or pin_sha256 instead"}
	case len(t.PinSHA256) > 0:
		detail += ", pin matches"
	case t.CAFile != "":
		detail += ", trusted through " + t.CAFile
	}
	return check{levelOK, "tls", detail, ""}
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

func clockCheck(now time.Time, date string) check {
	if date == "" {
		return check{levelWarn, "clock", "the server sent no Date header, so the skew is unknown", ""}
	}
	t, err := http.ParseTime(date)
	if err != nil {
		return check{levelWarn, "clock", "cannot parse the server's Date header " + fmt.Sprintf("%q", date), ""}
	}
	skew := now.Sub(t).Round(time.Second)
	abs := skew
	if abs < 0 {
		abs = -abs
	}
	detail := fmt.Sprintf("%s off the control plane's clock", skew)
	fix := "turn on time sync: sudo timedatectl set-ntp true"
	switch {
	case abs > skewFail:
		return check{levelFail, "clock", detail, fix}
	case abs > skewWarn:
		return check{levelWarn, "clock", detail, fix}
	}
	return check{levelOK, "clock", detail, ""}
}

// wsCheck sends a WebSocket handshake (RFC 6455 §4.1) and expects 101 with
// the matching Sec-WebSocket-Accept, then closes with a close frame.
func wsCheck(ctx context.Context, client *http.Client, base url.URL, token, via string) check {
	u := base
	u.Path = strings.TrimSuffix(u.Path, "/") + wsPath
	u.RawQuery = ""
	key := make([]byte, 16)
	_, _ = rand.Read(key)
	k := base64.StdEncoding.EncodeToString(key)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Sec-WebSocket-Key", k)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		return check{levelFail, "websocket", "upgrade request failed" + via + ": " + err.Error(), "check the proxy and the URL"}
	}
	defer resp.Body.Close()
	sum := sha1.Sum([]byte(k + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")) //nolint:gosec // protocol-mandated
	switch {
	case resp.StatusCode == http.StatusSwitchingProtocols && resp.Header.Get("Sec-WebSocket-Accept") == base64.StdEncoding.EncodeToString(sum[:]):
		if rw, ok := resp.Body.(io.Writer); ok {
			// A masked close frame, code 1000, so the server logs a clean close.
			mask := []byte{1, 2, 3, 4}
			_, _ = rw.Write([]byte{0x88, 0x82, mask[0], mask[1], mask[2], mask[3], 0x03 ^ mask[0], 0xe8 ^ mask[1]})
		}
		return check{levelOK, "websocket", "upgrade to " + u.Path + " accepted" + via, ""}
	case resp.StatusCode == http.StatusSwitchingProtocols:
		return check{levelFail, "websocket", "101 without a valid Sec-WebSocket-Accept" + via, "something between here and PipeOps rewrites the handshake"}
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return check{levelFail, "websocket", "the control plane rejected the token (" + resp.Status + ")", "get a new token from PipeOps and run sudo pipeopsctl install --token-file FILE"}
	}
	return check{levelFail, "websocket", "upgrade answered " + resp.Status + via + " instead of 101 Switching Protocols",
		"a proxy or load balancer in the way must pass WebSocket upgrades (Connection: Upgrade)"}
}
