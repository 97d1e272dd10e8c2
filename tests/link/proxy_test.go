package link

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

// connectProxy is a minimal HTTP CONNECT proxy that records its targets.
type connectProxy struct {
	ln      net.Listener
	mu      sync.Mutex
	targets []string
}

func startConnectProxy(t *testing.T) *connectProxy {
	t.Helper()
	p := &connectProxy{}
	p.ln = testbin.ServeTCP(t, "127.0.0.1:0", p.serve)
	return p
}

func (p *connectProxy) serve(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil || req.Method != http.MethodConnect {
		return
	}
	p.mu.Lock()
	p.targets = append(p.targets, req.Host)
	p.mu.Unlock()
	up, err := net.Dial("tcp", req.Host)
	if err != nil {
		fmt.Fprint(c, "HTTP/1.1 502 Bad Gateway\r\n\r\n")
		return
	}
	defer up.Close()
	fmt.Fprint(c, "HTTP/1.1 200 Connection established\r\n\r\n")
	go func() { _, _ = io.Copy(up, br); up.Close() }()
	_, _ = io.Copy(c, up)
}

func (p *connectProxy) saw(target string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, h := range p.targets {
		if h == target {
			return true
		}
	}
	return false
}

// nonLoopbackIPv4 is an address of this host that proxies apply to
// (Go never proxies loopback destinations).
func nonLoopbackIPv4(t *testing.T) string {
	t.Helper()
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil {
			return n.IP.String()
		}
	}
	t.Skip("no non-loopback IPv4 address on this host to route through a proxy")
	return ""
}

func TestTheAgentReachesTheControlPlaneThroughHTTPSProxy(t *testing.T) {
	env := kubetest.Cluster(t)
	ip := nonLoopbackIPv4(t)
	cert, key := writeServerCert(t, t.TempDir(), ip)
	proxy := startConnectProxy(t)
	dp := startDevplane(t, "--tls-cert", cert, "--tls-key", key, "--listen-host", ip)
	a := newAgent(t, dp.url(), env.Kubeconfig, "  tls:\n    ca_file: "+cert+"\n")
	a.env = []string{"HTTPS_PROXY=http://" + proxy.ln.Addr().String(), "NO_PROXY=127.0.0.1,localhost"}
	a.start()
	testbin.Eventually(t, 60*time.Second, "registered and heartbeating through the proxy", heartbeatingOnGateway(dp, 1))
	target := fmt.Sprintf("%s:%d", ip, dp.port)
	if !proxy.saw(target) {
		t.Fatalf("the proxy saw %v; want a CONNECT to %s", proxy.targets, target)
	}
}
