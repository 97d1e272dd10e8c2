// Package attack holds the attack tests of issue 13: each one tries, with
// the real pipeops-agent binary, a real kube-apiserver (internal/kubetest)
// and the reference control plane (internal/devplane, in-process), what a
// hostile control plane or anyone who may create cluster objects would try,
// and asserts that it fails and how.
package attack

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/pipeops/pipeops-vm-agent/internal/devplane"
	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

const token = "e2e-attack-token"

// rig is one real agent linked to an in-process reference control plane.
type rig struct {
	t         *testing.T
	env       *kubetest.Env
	plane     *devplane.Server
	agent     *testbin.Proc
	files     testbin.AgentFiles
	clusterID string
	seq       int
}

// startAgent runs pipeops-agent against env's cluster with extra top-level
// config (e.g. a security: section), and waits until its tunnel is up.
func startAgent(t *testing.T, env *kubetest.Env, extra string) *rig {
	t.Helper()
	plane := devplane.New(devplane.Config{Tokens: []string{token}})
	srv := httptest.NewServer(plane.Handler())
	t.Cleanup(srv.Close)
	t.Cleanup(plane.CloseAll)
	agentID := fmt.Sprintf("attack-%d", time.Now().UnixNano())
	r := &rig{t: t, env: env, plane: plane, clusterID: devplane.ClusterIDFor(agentID)}
	r.files = testbin.WriteAgentConfig(t, testbin.ShortTempDir(t), testbin.AgentConfig{Name: "e2e-attack", APIURL: srv.URL,
		Kubeconfig: env.Kubeconfig, Extra: "tunnel:\n  enabled: true\n" + extra})
	r.agent = testbin.Start(t, testbin.Build(t, "pipeops-agent"), testbin.AgentEnv(token, "PIPEOPS_AGENT_ID="+agentID), "run", "--config", r.files.Config)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := plane.WaitTunnel(ctx, r.clusterID); err != nil {
		t.Fatalf("the agent's tunnel did not come up: %v\n%s", err, r.agent.String())
	}
	return r
}

func (r *rig) session() *devplane.Session {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := r.plane.WaitSession(ctx, r.clusterID)
	if err != nil {
		r.t.Fatalf("no agent session: %v", err)
	}
	return s
}

// answer is how the agent answered one proxy_request.
type answer struct {
	Status int
	Body   string
	Err    string // proxy_error
}

func (a answer) String() string {
	return fmt.Sprintf("status %d, body %.300q, proxy_error %.300q", a.Status, a.Body, a.Err)
}

// proxy sends one proxy_request (buffered mode) and waits for its answer:
// proxy_response or proxy_error.
func (r *rig) proxy(req protocol.ProxyRequest) answer {
	r.t.Helper()
	s := r.session()
	r.seq++
	id := fmt.Sprintf("attack-%d", r.seq)
	msgs, cancel := s.Subscribe(id)
	defer cancel()
	ctx, stop := context.WithTimeout(context.Background(), 60*time.Second)
	defer stop()
	if err := s.Send(ctx, protocol.TypeProxyRequest, id, req); err != nil {
		r.t.Fatalf("send proxy_request: %v", err)
	}
	if req.IsWebSocket {
		defer func() { _ = s.Send(context.Background(), protocol.TypeProxyCancel, id, struct{}{}) }()
	}
	for {
		select {
		case env, ok := <-msgs:
			if !ok {
				r.t.Fatal("the agent's session ended")
			}
			switch env.Type {
			case protocol.TypeProxyResponse:
				var pr protocol.ProxyResponse
				if err := env.DecodePayload(&pr); err != nil {
					r.t.Fatal(err)
				}
				return answer{Status: pr.Status, Body: decodeBody(r.t, pr.Body, pr.Encoding)}
			case protocol.TypeProxyError:
				var e protocol.ErrorPayload
				_ = env.DecodePayload(&e)
				return answer{Err: e.Error}
			}
		case <-ctx.Done():
			r.t.Fatalf("no answer to %s %s within 60s\nagent:\n%s", req.Method, req.Path, r.agent.String())
		}
	}
}

func decodeBody(t *testing.T, body, enc string) string {
	t.Helper()
	if body == "" {
		return ""
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
	return string(b)
}

// serviceGET is proxy_request rule 3: GET path on Service ns/name:port.
func serviceGET(ns, name string, port int, path string) protocol.ProxyRequest {
	return protocol.ProxyRequest{Method: http.MethodGet, Path: path, Namespace: ns, ServiceName: name, ServicePort: protocol.FlexInt(port)}
}

// appWebSocket asks for the app WebSocket relay (§6.7) to ns/name:port.
func appWebSocket(ns, name string, port int) protocol.ProxyRequest {
	req := serviceGET(ns, name, port, "/ws")
	req.IsWebSocket = true
	return req
}

// tunnelGET opens a tunnel stream to Service ns/name:port (or a named
// forward when ns is ""), sends an HTTP GET and returns what came back
// before the stream closed.
func (r *rig) tunnelGET(ns, name string, port int) string {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := r.plane.OpenTunnelStream(ctx, r.clusterID, devplane.TunnelTarget{Service: name, Namespace: ns, Port: port})
	if err != nil {
		r.t.Fatalf("open tunnel stream: %v", err)
	}
	defer st.Close()
	_ = st.SetDeadline(time.Now().Add(30 * time.Second))
	_, _ = io.WriteString(st, "GET / HTTP/1.1\r\nHost: target\r\nConnection: close\r\n\r\n")
	b, _ := io.ReadAll(st)
	return string(b)
}

// metric reads one sample from the agent's /metrics (-1 when absent).
func (r *rig) metric(name, labels string) float64 {
	r.t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", r.files.Port))
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	want := name + "{" + labels + "} "
	if labels == "" {
		want = name + " "
	}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), want); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return -1
}

// secret is what the host-only backends answer; seeing it means the
// attack reached them.
const secret = "host-only secret 7c1e"

// hostBackend is a process on this host that only the host should reach:
// HTTP and WebSocket on addr ("127.0.0.1:0", "192.0.2.2:0", …). It counts
// the connections it accepted.
type hostBackend struct {
	ln    net.Listener
	mu    sync.Mutex
	conns int
}

func startHostBackend(t *testing.T, addr string) *hostBackend {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	b := &hostBackend{ln: ln}
	up := websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if websocket.IsWebSocketUpgrade(req) {
			ws, err := up.Upgrade(w, req, nil)
			if err == nil {
				_ = ws.WriteMessage(websocket.TextMessage, []byte(secret))
				ws.Close()
			}
			return
		}
		fmt.Fprint(w, secret)
	}), ConnState: func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			b.mu.Lock()
			b.conns++
			b.mu.Unlock()
		}
	}}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return b
}

func (b *hostBackend) port() int { return b.ln.Addr().(*net.TCPAddr).Port }

func (b *hostBackend) accepted() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.conns
}

// hostIPv4 is a non-loopback IPv4 address of this host.
func hostIPv4(t *testing.T) string {
	t.Helper()
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && !n.IP.IsLinkLocalUnicast() && n.IP.To4() != nil {
			return n.IP.String()
		}
	}
	missing(t, "this host has no non-loopback IPv4 address")
	return ""
}

// missing fails under CI=true and skips elsewhere (no silent skips in CI).
func missing(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s (CI=true, so this is a failure, not a skip)", why)
	}
	t.Skip(why)
}

// reasonText is how a refusal's message words each metric reason.
var reasonText = map[string]string{"loopback": "loopback", "link_local": "link-local", "host_address": "an address of this host"}

// waitResolved waits until the agent's Service resolver answers for
// ns/svc:port (before it has synced, Service calls go to the API server's
// service proxy instead), and returns that first answer.
func (r *rig) waitResolved(ns, svc string, port int) answer {
	r.t.Helper()
	var a answer
	testbin.Eventually(r.t, 60*time.Second, "the agent resolves Service "+ns+"/"+svc+" itself", func() bool {
		a = r.proxy(serviceGET(ns, svc, port, "/"))
		return strings.Contains(a.Body, secret) || a.Err != "" && !strings.Contains(a.Err, "API server service proxy") && !strings.Contains(a.Err, "bootstrapping")
	}, func() string { return a.String() })
	return a
}

// assertRefused checks that proxy_request, the app WebSocket relay and a
// tunnel stream to Service ns/svc:port are each refused, each counted once
// in pipeops_agent_egress_refused_total{reason}, that the control plane is
// told the target, the reason and the key that would allow it, and that
// nothing reached the backend b (which may be nil).
func assertRefused(t *testing.T, r *rig, ns, svc string, port int, target, reason string, b *hostBackend) {
	t.Helper()
	first := r.waitResolved(ns, svc, port)
	counted := func(t *testing.T, before float64) {
		t.Helper()
		if n := r.metric("pipeops_agent_egress_refused_total", `reason="`+reason+`"`); n != before+1 {
			t.Errorf("pipeops_agent_egress_refused_total{reason=%q} went from %v to %v; want one more", reason, before, n)
		}
	}
	named := func(t *testing.T, what, msg string) {
		t.Helper()
		for _, want := range []string{svc, target, reasonText[reason], "security.allowed_target_cidrs"} {
			if !strings.Contains(msg, want) {
				t.Errorf("%s does not name %q:\n%s", what, want, msg)
			}
		}
	}
	t.Run("proxy_request", func(t *testing.T) {
		if strings.Contains(first.Body, secret) || first.Err == "" {
			t.Fatalf("proxy_request reached the target: %s", first)
		}
		before := r.metric("pipeops_agent_egress_refused_total", `reason="`+reason+`"`)
		a := r.proxy(serviceGET(ns, svc, port, "/"))
		if strings.Contains(a.Body, secret) || a.Err == "" {
			t.Fatalf("proxy_request reached the target: %s", a)
		}
		named(t, "the proxy_error", a.Err)
		counted(t, before)
	})
	t.Run("app WebSocket relay", func(t *testing.T) {
		before := r.metric("pipeops_agent_egress_refused_total", `reason="`+reason+`"`)
		a := r.proxy(appWebSocket(ns, svc, port))
		if a.Status == http.StatusSwitchingProtocols || a.Status == 0 && a.Err == "" {
			t.Fatalf("the app relay reached the target: %s", a)
		}
		named(t, "the relay's answer", a.Body+a.Err)
		counted(t, before)
	})
	t.Run("tunnel stream", func(t *testing.T) {
		before := r.metric("pipeops_agent_egress_refused_total", `reason="`+reason+`"`)
		if got := r.tunnelGET(ns, svc, port); got != "" {
			t.Fatalf("the tunnel stream reached the target: %.200q", got)
		}
		counted(t, before)
	})
	if b != nil && b.accepted() != 0 {
		t.Errorf("the host backend accepted %d connections; want none", b.accepted())
	}
	if out := r.agent.String(); !strings.Contains(out, "refused a target named by the control plane") || !strings.Contains(out, target) {
		t.Errorf("the agent did not log the refusal of %s:\n%s", target, out)
	}
}

// rssKiB reads VmRSS and VmHWM (the peak since the last resetPeak) of pid.
func rssKiB(t *testing.T, pid int) (rss, peak int64) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		n, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			rss = n
		case "VmHWM:":
			peak = n
		}
	}
	return rss, peak
}

// resetPeak resets pid's VmHWM to its current RSS (proc(5), clear_refs 5).
func resetPeak(t *testing.T, pid int) {
	t.Helper()
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
		missing(t, "cannot reset the agent's peak RSS (/proc/PID/clear_refs): "+err.Error())
	}
}
