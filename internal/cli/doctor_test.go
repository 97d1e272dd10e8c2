package cli

import (
	"bufio"
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
)

const (
	unitHealthy = "LoadState=loaded\nActiveState=active\nSubState=running\nResult=success\nNRestarts=0\nUnitFileState=enabled\n"
	unitFailed  = "LoadState=loaded\nActiveState=failed\nSubState=failed\nResult=watchdog\nNRestarts=3\nUnitFileState=enabled\n"
	unitMissing = "LoadState=not-found\nActiveState=inactive\nSubState=dead\n"
)

// controlPlane is a TLS server that answers the controller WebSocket
// handshake like the real one and records what it saw.
type controlPlane struct {
	srv        *httptest.Server
	skew       time.Duration // added to fixedNow in the Date header
	wsStatus   int           // 0: answer 101
	sawToken   atomic.Value
	closed     chan bool // one value per upgrade: did a close frame arrive
	upgradesOK atomic.Int32
}

func newControlPlane(t *testing.T, skew time.Duration, wsStatus int) *controlPlane {
	cp := &controlPlane{skew: skew, wsStatus: wsStatus, closed: make(chan bool, 4)}
	cp.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Date", fixedNow.Add(cp.skew).Format(http.TimeFormat))
		if r.URL.Path != wsPath || r.Header.Get("Upgrade") != "websocket" {
			http.NotFound(w, r)
			return
		}
		cp.sawToken.Store(r.Header.Get("Authorization"))
		if cp.wsStatus != 0 {
			http.Error(w, "no upgrade here", cp.wsStatus)
			return
		}
		sum := sha1Accept(r.Header.Get("Sec-WebSocket-Key"))
		conn, rw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		cp.upgradesOK.Add(1) // before the 101 reaches the client, which may check the count at once
		fmt.Fprintf(rw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n", sum)
		rw.Flush()
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		b, err := rw.ReadByte()
		cp.closed <- err == nil && b == 0x88
	}))
	cp.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // doctor's TCP probe and bad pins make handshake noise
	t.Cleanup(cp.srv.Close)
	return cp
}

func sha1Accept(key string) string {
	// Computed independently of wsCheck with the RFC 6455 example in mind.
	h := sha1.New()
	io.WriteString(h, key+"258EAFA5-E914-47DA-95CA-C5AB0DC85B11")
	return base64.StdEncoding.EncodeToString(h.Sum(nil))
}

// pin is the base64 SPKI pin of the test server's certificate.
func (cp *controlPlane) pin() string {
	sum := sha256.Sum256(cp.srv.Certificate().RawSubjectPublicKeyInfo)
	return base64.StdEncoding.EncodeToString(sum[:])
}

func (cp *controlPlane) caFile(dir string) string {
	p := filepath.Join(dir, "ca.pem")
	os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cp.srv.Certificate().Raw}), 0o644)
	return p
}

// connectProxy is a minimal HTTPS proxy (CONNECT only) that counts tunnels
// and sends every tunnel to target, as a proxy resolving names would.
func connectProxy(t *testing.T, target string) (*httptest.Server, *atomic.Int32) {
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodConnect {
			http.Error(w, "CONNECT only", http.StatusMethodNotAllowed)
			return
		}
		up, err := net.Dial("tcp", target)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		n.Add(1)
		w.WriteHeader(http.StatusOK)
		conn, rw, _ := w.(http.Hijacker).Hijack()
		go func() { io.Copy(up, rw); up.Close() }()
		io.Copy(conn, up)
		conn.Close()
	}))
	t.Cleanup(srv.Close)
	return srv, &n
}

type doctorCase struct {
	name        string
	cp          *controlPlane
	cfg         string // agent.yaml body; CA and URL placeholders are filled in
	env         map[string]string
	defaults    string // /etc/default/pipeops-agent body
	agent       *apitype.StatusResponse
	unit        string
	freeBytes   uint64
	kubeconfigs []string
	host        string // replaces 127.0.0.1 in the URL
	golden      string
}

func runDoctorCase(t *testing.T, tc doctorCase) (string, []check) {
	t.Helper()
	dir := t.TempDir()
	u := tc.cp.srv.URL
	if tc.host != "" {
		u = strings.Replace(u, "127.0.0.1", tc.host, 1)
	}
	home := filepath.Join(dir, "home")
	os.MkdirAll(filepath.Join(home, ".kube"), 0o700)
	os.WriteFile(filepath.Join(home, ".kube", "config"), []byte("apiVersion: v1\nkind: Config\n"), 0o600)
	cfg := strings.NewReplacer("URL", u, "CAFILE", tc.cp.caFile(dir), "PIN", tc.cp.pin(), "HOMEKUBE", filepath.Join(home, ".kube", "config")).Replace(tc.cfg)
	cfgPath := filepath.Join(dir, "agent.yaml")
	os.WriteFile(cfgPath, []byte(cfg), 0o600)
	defaults := filepath.Join(dir, "pipeops-agent.default")
	if tc.defaults != "" {
		os.WriteFile(defaults, []byte(tc.defaults), 0o600)
	}
	e, _, _ := testEnv(t, tc.agent, tc.unit, nil)
	e.getenv = func(k string) string { return tc.env[k] }
	d := doctorDeps{
		configPath: cfgPath, defaultsFile: defaults, kubeconfigs: tc.kubeconfigs, stateDir: filepath.Join(dir, "var/lib/pipeops"),
		homeDirs: []string{home},
		statfs:   func(string) (uint64, uint64, error) { return tc.freeBytes, 100 << 30, nil },
		timeout:  5 * time.Second,
	}
	checks := runDoctor(context.Background(), e, d)
	var b strings.Builder
	printChecks(&b, checks)
	port := tc.cp.srv.Listener.Addr().(*net.TCPAddr).Port
	out := strings.NewReplacer(fmt.Sprintf(":%d", port), ":PORT", dir, "$TMP", e.client.SocketPath(), "SOCKET").Replace(b.String())
	return out, checks
}

func healthyAgent() *apitype.StatusResponse {
	st := sampleStatus()
	st.Conditions = []apitype.Condition{{Name: "kubernetes", OK: true, Required: true}, {Name: "rbac", OK: true, Required: true}}
	return st
}

func TestDoctorOnAHealthyHostPrintsOnlyOK(t *testing.T) {
	cp := newControlPlane(t, -2*time.Second, 0)
	out, checks := runDoctorCase(t, doctorCase{
		cp:    cp,
		cfg:   "version: 1\npipeops:\n  api_url: URL\n  tls:\n    ca_file: CAFILE\n    pin_sha256: [\"PIN\"]\n",
		env:   map[string]string{"PIPEOPS_TOKEN": "tok-healthy"},
		agent: healthyAgent(), unit: unitHealthy, freeBytes: 20 << 30,
	})
	golden(t, "doctor-healthy", out)
	for _, c := range checks {
		if c.Level != levelOK {
			t.Errorf("check %s = %s (%s); want OK", c.Name, c.Level, c.Detail)
		}
	}
	if got := cp.sawToken.Load(); got != "Bearer tok-healthy" {
		t.Errorf("the upgrade carried Authorization %q; want the token", got)
	}
	select {
	case ok := <-cp.closed:
		if !ok {
			t.Error("doctor did not close the WebSocket with a close frame")
		}
	case <-time.After(10 * time.Second):
		t.Error("the control plane never finished the upgraded connection")
	}
}

func TestDoctorNamesEachProblemWithItsFix(t *testing.T) {
	cases := []doctorCase{
		{
			name: "pin mismatch, no token, no kubeconfig, unit not installed", golden: "pin-mismatch",
			cp: newControlPlane(t, 0, 0),
			cfg: "version: 1\npipeops:\n  api_url: URL\n  tls:\n    ca_file: CAFILE\n" +
				"    pin_sha256: [\"sha256//47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\"]\n",
			kubeconfigs: []string{"/nonexistent/k3s.yaml"},
			unit:        unitMissing, freeBytes: 20 << 30,
		},
		{
			name: "unknown CA and a kubeconfig in a home directory", golden: "unknown-ca",
			cp:   newControlPlane(t, 0, 0),
			cfg:  "version: 1\npipeops:\n  api_url: URL\nkubernetes:\n  kubeconfig: HOMEKUBE\n",
			env:  map[string]string{"PIPEOPS_TOKEN": "t"},
			unit: unitHealthy, freeBytes: 20 << 30,
		},
		{
			name: "clock skew, no websocket upgrade, failed unit, low disk, a failing condition", golden: "degraded",
			cp:  newControlPlane(t, 10*time.Minute, http.StatusBadRequest),
			cfg: "version: 1\npipeops:\n  api_url: URL\n  tls:\n    ca_file: CAFILE\n",
			env: map[string]string{"PIPEOPS_TOKEN": "t"},
			agent: func() *apitype.StatusResponse {
				st := healthyAgent()
				st.Conditions[1] = apitype.Condition{Name: "rbac", Required: true, Reason: "cannot create pods/exec in namespace default"}
				return st
			}(),
			unit: unitFailed, freeBytes: 50 << 20,
		},
		{
			name: "the token is rejected", golden: "token-rejected",
			cp:  newControlPlane(t, 0, http.StatusUnauthorized),
			cfg: "version: 1\npipeops:\n  api_url: URL\n  tls:\n    ca_file: CAFILE\n",
			env: map[string]string{"PIPEOPS_TOKEN": "t"}, agent: healthyAgent(),
			unit: unitHealthy, freeBytes: 20 << 30,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, checks := runDoctorCase(t, tc)
			golden(t, "doctor-"+tc.golden, out)
			fails := 0
			for _, c := range checks {
				if c.Level == levelFail {
					fails++
					if c.Fix == "" {
						t.Errorf("FAIL %s has no fix", c.Name)
					}
				}
			}
			if fails == 0 {
				t.Errorf("no check failed:\n%s", out)
			}
		})
	}
}

func TestDoctorWarnsAboutEveryInsecureSetting(t *testing.T) {
	cp := newControlPlane(t, 0, 0)
	out, checks := runDoctorCase(t, doctorCase{
		cp:    cp,
		cfg:   "version: 1\nagent:\n  bind_address: 0.0.0.0\npipeops:\n  api_url: URL\n  tls:\n    insecure_skip_verify: true\n",
		env:   map[string]string{"PIPEOPS_TOKEN": "t"},
		agent: healthyAgent(), unit: unitHealthy, freeBytes: 20 << 30,
	})
	golden(t, "doctor-insecure", out)
	var warned []string
	for _, c := range checks {
		if c.Level == levelWarn && c.Name == "security" {
			warned = append(warned, strings.SplitN(c.Detail, ":", 2)[0])
		}
	}
	if want := []string{"pipeops.tls.insecure_skip_verify", "agent.bind_address"}; !slices.Equal(warned, want) {
		t.Errorf("security warnings for %q; want %q\n%s", warned, want, out)
	}
}

func TestDoctorGoesThroughTheAgentsProxy(t *testing.T) {
	cp := newControlPlane(t, 0, 0)
	proxy, tunnels := connectProxy(t, cp.srv.Listener.Addr().String())
	// Loopback URLs never use a proxy (net/http's rule), so the control plane
	// goes by a name its certificate carries and only the proxy can reach.
	out, checks := runDoctorCase(t, doctorCase{
		cp: cp, host: "cp.example.com",
		cfg:      "version: 1\npipeops:\n  api_url: URL\n  tls:\n    ca_file: CAFILE\n",
		env:      map[string]string{"PIPEOPS_TOKEN": "t"},
		defaults: "# the agent's environment\nHTTPS_PROXY=" + proxy.URL + "\n",
		agent:    healthyAgent(), unit: unitHealthy, freeBytes: 20 << 30,
	})
	for _, c := range checks {
		if c.Level != levelOK && c.Name != "dns" { // the name may or may not resolve here
			t.Errorf("check %s = %s (%s); want OK", c.Name, c.Level, c.Detail)
		}
	}
	if tunnels.Load() < 2 || cp.upgradesOK.Load() != 1 {
		t.Errorf("proxy tunnels = %d, upgrades = %d; want the request and the upgrade through the proxy", tunnels.Load(), cp.upgradesOK.Load())
	}
	if !strings.Contains(out, "websocket    upgrade to "+wsPath+" accepted via proxy http://127.0.0.1:") {
		t.Errorf("output does not name the proxy:\n%s", out)
	}
}

func TestDoctorExitsNonZeroOnAnyFail(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "agent.yaml")
	os.WriteFile(cfg, []byte("version: 1\nagent:\n  port: 0\n"), 0o600)
	e, out, _ := testEnv(t, nil, unitMissing, nil)
	if code := run(context.Background(), e, []string{"pipeopsctl", "doctor", "--config", cfg}); code != ExitError {
		t.Fatalf("exit %d; want %d\n%s", code, ExitError, out)
	}
	sc := bufio.NewScanner(strings.NewReader(out.String()))
	sc.Scan()
	if line := sc.Text(); !strings.HasPrefix(line, "FAIL  config") || !strings.Contains(line, "agent.port") {
		t.Errorf("first line = %q; want a config FAIL naming agent.port", line)
	}
}
