package kubeproxy

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"k8s.io/client-go/rest"

	"github.com/pipeops/pipeops-vm-agent/internal/egress"
	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

// These are narrow unit tests: a fake connection and an httptest server
// standing in for the API server. The real kube-apiserver, devplane and
// kubectl are exercised in integration_test.go.

func decodeBody(t testing.TB, body, enc string) []byte {
	t.Helper()
	if body == "" {
		return nil
	}
	b, err := base64.StdEncoding.DecodeString(body)
	if err != nil {
		t.Fatalf("body is not base64: %v", err)
	}
	if enc == "gzip" {
		zr, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		if b, err = io.ReadAll(zr); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

// tlsBackend is an HTTPS server and a rest.Config that trusts it, with a
// ServiceAccount-like bearer token.
func tlsBackend(t testing.TB, h http.Handler) (*httptest.Server, *rest.Config) {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	return srv, &rest.Config{Host: srv.URL, BearerToken: "sa-token", TLSClientConfig: rest.TLSClientConfig{CAData: ca}}
}

func newTestProxy(t testing.TB, cfg *rest.Config, mod func(*Options)) *Proxy {
	t.Helper()
	o := Options{RESTConfig: func() *rest.Config { return cfg }, Registerer: prometheus.NewRegistry(), Egress: loopbackAllowed(t)}
	if mod != nil {
		mod(&o)
	}
	p, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// loopbackAllowed is the dial policy of these tests' Service backends,
// which listen on 127.0.0.1: what an operator would set with
// security.allowed_target_cidrs: ["127.0.0.1/32"].
func loopbackAllowed(t testing.TB) *egress.Policy {
	t.Helper()
	pol, err := egress.New(egress.Options{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}})
	if err != nil {
		t.Fatal(err)
	}
	return pol
}

func TestBufferedResponsesFollowTheGzipRule(t *testing.T) {
	big := strings.Repeat(`{"k":"v"},`, 200)
	_, cfg := tlsBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/api/big":
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprint(w, big)
		case "/api/small":
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprint(w, "{}")
		case "/api/png":
			w.Header().Set("Content-Type", "image/png")
			fmt.Fprint(w, big)
		case "/api/empty":
			w.WriteHeader(http.StatusNoContent)
		}
	}))
	p := newTestProxy(t, cfg, nil)
	c := newFakeConn(t)
	tests := []struct {
		path, enc string
		status    int
		body      string
	}{
		{"/api/big", "gzip", 200, big},
		{"/api/small", "base64", 200, "{}"},
		{"/api/png", "base64", 200, big},
		{"/api/empty", "", 204, ""},
	}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			send(t, p, c, protocol.TypeProxyRequest, "r"+tc.path, protocol.ProxyRequest{Method: "GET", Path: tc.path})
			env := c.next(t)
			var pr protocol.ProxyResponse
			mustDecode(t, env, &pr)
			if env.Type != protocol.TypeProxyResponse || pr.Status != tc.status || pr.Encoding != tc.enc {
				t.Fatalf("got %s status %d encoding %q; want proxy_response %d %q", env.Type, pr.Status, pr.Encoding, tc.status, tc.enc)
			}
			if got := string(decodeBody(t, pr.Body, pr.Encoding)); got != tc.body {
				t.Errorf("body = %.40q…; want %.40q…", got, tc.body)
			}
		})
	}
}

func TestStreamingResponsesAreChunkedAt32KiB(t *testing.T) {
	payload := bytes.Repeat([]byte("0123456789abcdef"), 20000) // 320,000 bytes
	_, cfg := tlsBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Keep-Alive", "timeout=5")
		_, _ = w.Write(payload)
	}))
	p := newTestProxy(t, cfg, nil)
	c := newFakeConn(t)
	send(t, p, c, protocol.TypeProxyRequest, "s1", protocol.ProxyRequest{Method: "GET", Path: "/api/blob", SupportsResponseStreaming: true})
	r := c.response(t, "s1")
	if r.Err != "" || r.Status != 200 || !bytes.Equal(r.Body, payload) {
		t.Fatalf("status %d, err %q, %d bytes; want 200 and %d bytes", r.Status, r.Err, len(r.Body), len(payload))
	}
	if r.Types[0] != protocol.TypeProxyResponseHeader || r.Types[len(r.Types)-1] != protocol.TypeProxyResponseEnd {
		t.Errorf("message order = %v; want header, chunks, end", r.Types)
	}
	for _, n := range r.Chunks {
		if n > protocol.MaxChunk {
			t.Fatalf("chunk of %d bytes exceeds 32 KiB", n)
		}
	}
	if _, ok := r.Headers["Keep-Alive"]; ok {
		t.Errorf("hop-by-hop Keep-Alive was not removed: %v", r.Headers)
	}
}

func TestASmallStreamedResponseIsQueuedAsOneBatch(t *testing.T) {
	body := []byte(`{"kind":"ConfigMap","apiVersion":"v1"}`)
	_, cfg := tlsBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.URL.Path == "/api/empty" {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		if r.URL.Path == "/api/unknown-length" {
			w.(http.Flusher).Flush() // no Content-Length: streamed as it comes
		}
		_, _ = w.Write(body)
	}))
	p := newTestProxy(t, cfg, nil)
	c := newFakeConn(t)
	header, chunk, end := protocol.TypeProxyResponseHeader, protocol.TypeProxyResponseChunk, protocol.TypeProxyResponseEnd
	for _, tc := range []struct {
		path    string
		types   []string
		batched bool
	}{
		{"/api/small", []string{header, chunk, end}, true},
		{"/api/empty", []string{header, end}, true},
		{"/api/unknown-length", []string{header, chunk, end}, false},
	} {
		before := len(c.batchTypes())
		send(t, p, c, protocol.TypeProxyRequest, tc.path, protocol.ProxyRequest{Path: tc.path, SupportsResponseStreaming: true})
		r := c.response(t, tc.path)
		if fmt.Sprint(r.Types) != fmt.Sprint(tc.types) {
			t.Errorf("%s: messages %v; want %v", tc.path, r.Types, tc.types)
		}
		if len(tc.types) == 3 && !bytes.Equal(r.Body, body) {
			t.Errorf("%s: body %q; want %q", tc.path, r.Body, body)
		}
		batches := c.batchTypes()[before:]
		if tc.batched && (len(batches) != 1 || fmt.Sprint(batches[0]) != fmt.Sprint(tc.types)) {
			t.Errorf("%s: batches %v; want one batch %v", tc.path, batches, tc.types)
		}
		if !tc.batched && len(batches) != 0 {
			t.Errorf("%s: batches %v; want none (a body of unknown length streams as it arrives)", tc.path, batches)
		}
	}
}

func TestRequestBodiesArriveInEveryMode(t *testing.T) {
	_, cfg := tlsBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintf(w, "%s %s", r.Method, b)
	}))
	p := newTestProxy(t, cfg, nil)
	c := newFakeConn(t)

	t.Run("base64 inline", func(t *testing.T) {
		send(t, p, c, protocol.TypeProxyRequest, "b1", protocol.ProxyRequest{Method: "POST", Path: "/api/x", Body: protocol.Body(base64.StdEncoding.EncodeToString([]byte("hello"))), BodyEncoding: "base64"})
		if r := c.response(t, "b1"); string(r.Body) != "POST hello" {
			t.Errorf("body = %q (err %q); want POST hello", r.Body, r.Err)
		}
	})
	t.Run("raw inline JSON object", func(t *testing.T) {
		p.Handle(c, &protocol.Envelope{Type: protocol.TypeProxyRequest, RequestID: "b2", Payload: []byte(`{"method":"PUT","path":"/api/x","body":{"a": 1}}`)})
		if r := c.response(t, "b2"); string(r.Body) != `PUT {"a":1}` {
			t.Errorf("body = %q (err %q)", r.Body, r.Err)
		}
	})
	t.Run("streamed chunks", func(t *testing.T) {
		send(t, p, c, protocol.TypeProxyRequest, "b3", protocol.ProxyRequest{Method: "POST", Path: "/api/x", UseStreaming: true})
		for _, part := range []string{"one ", "two ", "three"} {
			send(t, p, c, protocol.TypeProxyRequestChunk, "b3", protocol.ProxyRequestChunk{Data: base64.StdEncoding.EncodeToString([]byte(part))})
		}
		send(t, p, c, protocol.TypeProxyRequestStreamEnd, "b3", struct{}{})
		if r := c.response(t, "b3"); string(r.Body) != "POST one two three" {
			t.Errorf("body = %q (err %q)", r.Body, r.Err)
		}
	})
	t.Run("streamed with the chunk field and the streaming alias", func(t *testing.T) {
		p.Handle(c, &protocol.Envelope{Type: protocol.TypeProxyRequest, RequestID: "b4", Payload: []byte(`{"method":"POST","path":"/api/x","streaming":true}`)})
		send(t, p, c, protocol.TypeProxyRequestChunk, "b4", protocol.ProxyRequestChunk{Chunk: base64.StdEncoding.EncodeToString([]byte("aliased"))})
		send(t, p, c, protocol.TypeProxyRequestStreamEnd, "b4", struct{}{})
		if r := c.response(t, "b4"); string(r.Body) != "POST aliased" {
			t.Errorf("body = %q (err %q)", r.Body, r.Err)
		}
	})
	t.Run("binary frame", func(t *testing.T) {
		send(t, p, c, protocol.TypeProxyRequest, "b5", protocol.ProxyRequest{Method: "POST", Path: "/api/x", BodyBinary: true, BodySize: 3})
		if !c.deliverBinary("b5", []byte("bin")) {
			t.Fatal("the proxy did not reserve the binary frame before returning from Handle")
		}
		if r := c.response(t, "b5"); string(r.Body) != "POST bin" {
			t.Errorf("body = %q (err %q)", r.Body, r.Err)
		}
	})
	t.Run("binary frame refused while yamux is active", func(t *testing.T) {
		yc := newFakeConn(t)
		yc.yamux = true
		send(t, p, yc, protocol.TypeProxyRequest, "b6", protocol.ProxyRequest{Method: "POST", Path: "/api/x", BodyBinary: true})
		if r := yc.response(t, "b6"); !strings.Contains(r.Err, "yamux") {
			t.Errorf("error = %q; want a refusal naming yamux", r.Err)
		}
	})
}

func TestAuthorizationPassesThroughOrUsesTheServiceAccount(t *testing.T) {
	_, cfg := tlsBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s|%s|%s", r.Header.Get("Authorization"), r.Header.Get("X-Private"), r.Header.Get("X-Forwarded-Proto"))
	}))
	p := newTestProxy(t, cfg, nil)
	c := newFakeConn(t)
	tests := []struct {
		name    string
		headers protocol.Headers
		scheme  string
		want    string
	}{
		{"without Authorization the ServiceAccount token is injected", nil, "", "Bearer sa-token||"},
		{"a control-plane Authorization passes verbatim", protocol.Headers{"Authorization": {"Bearer cp-user"}}, "", "Bearer cp-user||"},
		{"headers named by Connection are dropped", protocol.Headers{"Connection": {"X-Private"}, "X-Private": {"secret"}}, "", "Bearer sa-token||"},
		{"https scheme adds X-Forwarded-Proto", nil, "https", "Bearer sa-token||https"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id := fmt.Sprint("a", i)
			send(t, p, c, protocol.TypeProxyRequest, id, protocol.ProxyRequest{Method: "GET", Path: "/api/v1", Headers: tc.headers, Scheme: tc.scheme})
			if r := c.response(t, id); string(r.Body) != tc.want {
				t.Errorf("backend saw %q (err %q); want %q", r.Body, r.Err, tc.want)
			}
		})
	}
}

func TestTheServiceAccountTokenAndUserAgentArriveWhereverTheTokenComesFrom(t *testing.T) {
	_, cfg := tlsBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s|%s", r.Header.Get("Authorization"), r.Header.Get("User-Agent"))
	}))
	cfg.UserAgent = "pipeops-agent/test"
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("file-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fromFile := rest.CopyConfig(cfg)
	fromFile.BearerToken, fromFile.BearerTokenFile = "", tokenFile
	for _, tc := range []struct {
		name    string
		cfg     *rest.Config
		headers protocol.Headers
		want    string
	}{
		{"a static token is set by the proxy", cfg, nil, "Bearer sa-token|pipeops-agent/test"},
		{"a token file goes through client-go's wrapper", fromFile, nil, "Bearer file-token|pipeops-agent/test"},
		{"the control plane's User-Agent is kept", cfg, protocol.Headers{"User-Agent": {"kubectl/v1.36"}}, "Bearer sa-token|kubectl/v1.36"},
		{"an empty Authorization gets the token", cfg, protocol.Headers{"Authorization": {""}}, "Bearer sa-token|pipeops-agent/test"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newTestProxy(t, tc.cfg, nil)
			c := newFakeConn(t)
			send(t, p, c, protocol.TypeProxyRequest, "u", protocol.ProxyRequest{Path: "/api/v1", Headers: tc.headers})
			if r := c.response(t, "u"); string(r.Body) != tc.want {
				t.Errorf("backend saw %q (err %q); want %q", r.Body, r.Err, tc.want)
			}
		})
	}
}

func TestInvalidRequestsAreRefusedWithAReason(t *testing.T) {
	var hits atomic.Int32
	_, cfg := tlsBackend(t, http.HandlerFunc(func(http.ResponseWriter, *http.Request) { hits.Add(1) }))
	p := newTestProxy(t, cfg, nil)
	c := newFakeConn(t)
	tests := []struct {
		name string
		req  string
		want string
	}{
		{"dot-dot", `{"path":"/api/../etc"}`, ".."},
		{"escaped dot-dot", `{"path":"/api/%2e%2e/x"}`, ".."},
		{"absolute URL", `{"path":"http://evil/api"}`, "absolute path"},
		{"scheme-relative URL", `{"path":"//evil/api"}`, "absolute path"},
		{"CR LF in path", `{"path":"/api/v1\r\nX: y"}`, "control character"},
		{"CR LF in query", `{"path":"/api/v1","query":"a=b\r\n"}`, "control character"},
		{"CR LF in a header", `{"path":"/api/v1","headers":{"X-A":"b\r\nX-B: c"}}`, "control character"},
		{"service name with dots", `{"path":"/","service_name":"a.b","namespace":"ns","service_port":80}`, "[a-z0-9-]"},
		{"service port out of range", `{"path":"/","service_name":"web","namespace":"ns","service_port":70000}`, "1-65535"},
		{"non-Kubernetes path without a target", `{"path":"/index.html"}`, "no ingress controller"},
		{"malformed payload", `{"path":5}`, "malformed"},
		{"bad deadline", `{"path":"/api","deadline":"tomorrow"}`, "deadline"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id := fmt.Sprint("v", i)
			p.Handle(c, &protocol.Envelope{Type: protocol.TypeProxyRequest, RequestID: id, Payload: []byte(tc.req)})
			if r := c.response(t, id); !strings.Contains(r.Err, tc.want) {
				t.Errorf("error = %q; want it to mention %q", r.Err, tc.want)
			}
		})
	}
	if n := hits.Load(); n != 0 {
		t.Errorf("the backend was called %d times for invalid requests", n)
	}
}

func TestErrorsSayWhatToDo(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now: connection refused
	t.Run("API server unreachable", func(t *testing.T) {
		p := newTestProxy(t, &rest.Config{Host: "https://" + addr}, nil)
		c := newFakeConn(t)
		send(t, p, c, protocol.TypeProxyRequest, "e1", protocol.ProxyRequest{Path: "/api/v1/pods"})
		if r := c.response(t, "e1"); !strings.Contains(r.Err, "unreachable") || !strings.Contains(r.Err, "kube-apiserver is running") {
			t.Errorf("error = %q; want API server unreachable with a hint", r.Err)
		}
	})
	t.Run("identity not bootstrapped yet", func(t *testing.T) {
		p := newTestProxy(t, nil, nil)
		c := newFakeConn(t)
		send(t, p, c, protocol.TypeProxyRequest, "e2", protocol.ProxyRequest{Path: "/api/v1/pods"})
		if r := c.response(t, "e2"); r.Err != ErrBootstrapping.Error() {
			t.Errorf("error = %q; want %q", r.Err, ErrBootstrapping)
		}
	})
	t.Run("buffered response over the cap", func(t *testing.T) {
		_, cfg := tlsBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = w.Write(make([]byte, 3<<20))
		}))
		p := newTestProxy(t, cfg, func(o *Options) { o.MaxBufferedBytes = 1 << 20 })
		c := newFakeConn(t)
		send(t, p, c, protocol.TypeProxyRequest, "e3", protocol.ProxyRequest{Path: "/api/v1/big"})
		if r := c.response(t, "e3"); !strings.Contains(r.Err, "proxy.max_buffered_bytes") || !strings.Contains(r.Err, "supports_response_streaming") {
			t.Errorf("error = %q; want the cap named with what to do", r.Err)
		}
	})
	t.Run("RBAC denial names the verb and resource", func(t *testing.T) {
		body := `{"kind":"Status","apiVersion":"v1","status":"Failure","message":"pods \"web-0\" is forbidden: User \"system:serviceaccount:pipeops-system:pipeops-agent\" cannot create resource \"pods/exec\" in API group \"\" in the namespace \"app\"","reason":"Forbidden","code":403}`
		got := explainStatus(403, []byte(body), "Kubernetes API server x")
		for _, want := range []string{`create "pods/exec"`, `namespace "app"`, "ClusterRole", "system:serviceaccount:pipeops-system:pipeops-agent"} {
			if !strings.Contains(got, want) {
				t.Errorf("explainStatus = %q; want it to contain %q", got, want)
			}
		}
	})
}

func TestTimeoutsFollowTheSpec(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	p := newTestProxy(t, nil, func(o *Options) { o.Now = func() time.Time { return now } })
	tests := []struct {
		name string
		req  string
		want time.Duration
	}{
		{"plain call gets the 2 minute default", `{"path":"/api/v1/pods"}`, 2 * time.Minute},
		{"timeout is milliseconds", `{"path":"/api/v1/pods","timeout":5000}`, 5 * time.Second},
		{"deadline wins over timeout", `{"path":"/api","timeout":5000,"deadline":"2026-01-01T00:00:42Z"}`, 42 * time.Second},
		{"watch=true is long-lived", `{"path":"/api/v1/pods","query":"watch=true"}`, 24 * time.Hour},
		{"watch=1 is long-lived", `{"path":"/api/v1/pods","query":"watch=1"}`, 24 * time.Hour},
		{"follow=true logs are long-lived", `{"path":"/api/v1/namespaces/a/pods/b/log","query":"follow=true"}`, 24 * time.Hour},
		{"a /watch/ segment is long-lived", `{"path":"/api/v1/watch/pods"}`, 24 * time.Hour},
		{"event streams are long-lived", `{"path":"/api/x","headers":{"Accept":"text/event-stream"}}`, 24 * time.Hour},
		{"a watch with a timeout keeps it", `{"path":"/api/v1/pods","query":"watch=true","timeout":"90s"}`, 90 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var req protocol.ProxyRequest
			if err := (&protocol.Envelope{Payload: []byte(tc.req)}).DecodePayload(&req); err != nil {
				t.Fatal(err)
			}
			dl, err := p.deadline(&req, false)
			if err != nil || dl.Sub(now) != tc.want {
				t.Errorf("deadline = %v, %v; want now+%v", dl.Sub(now), err, tc.want)
			}
		})
	}
}

func TestExcessRequestsAreRefusedNotQueued(t *testing.T) {
	release := make(chan struct{})
	_, cfg := tlsBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer close(release)
	p := newTestProxy(t, cfg, func(o *Options) { o.MaxInFlight = 2 })
	c := newFakeConn(t)
	send(t, p, c, protocol.TypeProxyRequest, "q1", protocol.ProxyRequest{Path: "/api/slow"})
	send(t, p, c, protocol.TypeProxyRequest, "q2", protocol.ProxyRequest{Path: "/api/slow"})
	send(t, p, c, protocol.TypeProxyRequest, "q3", protocol.ProxyRequest{Path: "/api/slow"})
	if r := c.response(t, "q3"); !strings.Contains(r.Err, "limit of 2 concurrent") || !strings.Contains(r.Err, "proxy.max_in_flight") {
		t.Errorf("third request error = %q; want the limit named with what to do", r.Err)
	}
	if st := p.Status(); st.InFlight != 2 || st.Errors != 1 {
		t.Errorf("status = %+v; want 2 in flight and 1 error", st)
	}
}

func TestALostConnectionCancelsItsRequestsAndSendsNothing(t *testing.T) {
	var ended atomic.Int32
	_, cfg := tlsBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.(http.Flusher).Flush()
		<-r.Context().Done()
		ended.Add(1)
	}))
	p := newTestProxy(t, cfg, nil)
	c := newFakeConn(t)
	for _, id := range []string{"w1", "w2", "w3"} {
		send(t, p, c, protocol.TypeProxyRequest, id, protocol.ProxyRequest{Path: "/api/v1/pods", Query: "watch=true", SupportsResponseStreaming: true})
		if env := c.next(t); env.Type != protocol.TypeProxyResponseHeader {
			t.Fatalf("got %s; want the header of %s", env.Type, id)
		}
	}
	c.cancel() // the connection ends
	testbin.Eventually(t, 10*time.Second, "every watch cancelled", func() bool { return ended.Load() == 3 && p.InFlight() == 0 },
		func() string {
			return fmt.Sprintf("backend ended %d of 3, %d still in flight", ended.Load(), p.InFlight())
		})
	c.expectNone(t, 100*time.Millisecond)
}

func TestMetricsAreExported(t *testing.T) {
	_, cfg := tlsBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") }))
	reg := prometheus.NewRegistry()
	p := newTestProxy(t, cfg, func(o *Options) { o.Registerer = reg })
	c := newFakeConn(t)
	send(t, p, c, protocol.TypeProxyRequest, "m1", protocol.ProxyRequest{Path: "/api"})
	c.response(t, "m1")
	// The proxy counts a request once its last message is sent, which is
	// just after the fake connection has it.
	ok2xx := p.m.requests.WithLabelValues("2xx")
	out := p.m.bytes.WithLabelValues("out")
	testbin.Eventually(t, 5*time.Second, "requests_total{code_class=2xx}=1, bytes_total{direction=out}=2 and one agent_seconds observation", func() bool {
		return testutil.ToFloat64(ok2xx) == 1 && testutil.ToFloat64(out) == 2 &&
			histogramCount(t, reg, "pipeops_agent_proxy_agent_seconds") == 1
	})
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, mf := range mfs {
		got[mf.GetName()] = true
	}
	for _, want := range []string{"pipeops_agent_proxy_requests_total", "pipeops_agent_proxy_in_flight", "pipeops_agent_proxy_bytes_total",
		"pipeops_agent_proxy_request_duration_seconds", "pipeops_agent_proxy_agent_seconds", "pipeops_agent_proxy_websocket_relays"} {
		if !got[want] {
			t.Errorf("metric %s missing (have %v)", want, got)
		}
	}
}

// histogramCount is the sample count of a gathered histogram (0 when absent).
func histogramCount(t testing.TB, reg *prometheus.Registry, name string) uint64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	return 0
}

func TestTCPTunnelStartIsAnsweredUnsupported(t *testing.T) {
	p := newTestProxy(t, nil, nil)
	c := newFakeConn(t)
	send(t, p, c, protocol.TypeTCPTunnelStart, "t-5", map[string]any{"tunnel_id": "t-5", "service_name": "web"})
	env := c.next(t)
	var cl protocol.TCPTunnelClose
	mustDecode(t, env, &cl)
	if env.Type != protocol.TypeTCPTunnelClose || env.RequestID != "t-5" || cl.Reason != "unsupported" {
		t.Fatalf("got %s %s; want tcp_tunnel_close unsupported", env.Type, env.Payload)
	}
	send(t, p, c, protocol.TypeUDPTunnelData, "", map[string]any{"tunnel_id": "u", "data": "AA=="})
	send(t, p, c, protocol.TypeProxyStreamData, "x", map[string]any{"data": "AA=="})
	c.expectNone(t, 100*time.Millisecond)
}
