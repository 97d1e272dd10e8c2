// Package browser drives a real headless Chromium for end-to-end tests of
// the agent's dashboard, through chromedriver's W3C WebDriver HTTP API with
// net/http only (no Selenium or DevTools client dependency). Debian's
// chromium and chromium-driver packages provide both binaries; install them
// with scripts/browser-setup.sh.
package browser

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Flags every session uses; they keep Chromium quiet and offline on CI hosts.
var chromiumArgs = []string{
	"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
	"--disable-background-networking", "--disable-component-update", "--disable-sync",
	"--disable-dev-shm-usage", "--window-size=1400,1100",
}

// Env names that override where the binaries are.
const (
	EnvChromium     = "PIPEOPS_CHROMIUM"
	EnvChromedriver = "PIPEOPS_CHROMEDRIVER"
)

// Session is one browser session.
type Session struct {
	base string // http://127.0.0.1:<port>/session/<id>
	hc   *http.Client
}

// find returns the first of names on PATH (or the override in env).
func find(env string, names ...string) string {
	if p := os.Getenv(env); p != "" {
		if _, err := os.Stat(p); err != nil {
			return ""
		}
		return p
	}
	for _, n := range names {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
	}
	return ""
}

// Start launches chromedriver and a headless Chromium with a fresh profile.
// A missing browser fails the test under CI=true and skips it elsewhere.
func Start(t testing.TB) *Session {
	t.Helper()
	chromium := find(EnvChromium, "chromium", "chromium-browser", "google-chrome")
	driver := find(EnvChromedriver, "chromedriver")
	if chromium == "" || driver == "" {
		msg := "headless Chromium and chromedriver are needed: run scripts/browser-setup.sh (apt-get install -y chromium chromium-driver)"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg + " (CI=true, so this is a failure, not a skip)")
		}
		t.Skip(msg)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	var log bytes.Buffer
	cmd := exec.Command(driver, "--port="+strconv.Itoa(port), "--allowed-ips=127.0.0.1")
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatalf("start chromedriver: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("chromedriver output:\n%s", log.String())
		}
	})
	root := "http://127.0.0.1:" + strconv.Itoa(port)
	hc := &http.Client{Timeout: 60 * time.Second}
	deadline := time.Now().Add(20 * time.Second)
	for {
		var st struct {
			Value struct{ Ready bool } `json:"value"`
		}
		if err := call(hc, http.MethodGet, root+"/status", nil, &st); err == nil && st.Value.Ready {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("chromedriver did not become ready\n%s", log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	args := append([]string{"--user-data-dir=" + t.TempDir()}, chromiumArgs...)
	caps := map[string]any{"capabilities": map[string]any{"alwaysMatch": map[string]any{
		"browserName": "chrome", "pageLoadStrategy": "normal",
		"goog:chromeOptions": map[string]any{"binary": chromium, "args": args},
	}}}
	var created struct {
		Value struct {
			SessionID    string         `json:"sessionId"`
			Capabilities map[string]any `json:"capabilities"`
		} `json:"value"`
	}
	if err := call(hc, http.MethodPost, root+"/session", caps, &created); err != nil {
		t.Fatalf("new browser session: %v\n%s", err, log.String())
	}
	s := &Session{base: root + "/session/" + created.Value.SessionID, hc: hc}
	t.Cleanup(func() { _ = call(hc, http.MethodDelete, s.base, nil, nil) })
	t.Logf("browser %v %v", created.Value.Capabilities["browserName"], created.Value.Capabilities["browserVersion"])
	return s
}

// call does one WebDriver request and decodes the answer into out.
func call(hc *http.Client, method, url string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Value struct{ Error, Message string } `json:"value"`
		}
		_ = json.Unmarshal(b, &e)
		return fmt.Errorf("webdriver %s %s: %d %s: %s", method, url, resp.StatusCode, e.Value.Error, firstLine(e.Value.Message))
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// Open navigates to url and waits for the page to load.
func (s *Session) Open(t testing.TB, url string) {
	t.Helper()
	if err := call(s.hc, http.MethodPost, s.base+"/url", map[string]string{"url": url}, nil); err != nil {
		t.Fatal(err)
	}
}

// Eval runs a script (a function body; use `return`) in the page and returns its result.
func (s *Session) Eval(t testing.TB, script string, args ...any) any {
	t.Helper()
	v, err := s.eval(script, args...)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func (s *Session) eval(script string, args ...any) (any, error) {
	if args == nil {
		args = []any{}
	}
	var out struct {
		Value any `json:"value"`
	}
	err := call(s.hc, http.MethodPost, s.base+"/execute/sync", map[string]any{"script": script, "args": args}, &out)
	return out.Value, err
}

// Text is the rendered text of the element with the given id ("" if absent).
func (s *Session) Text(t testing.TB, id string) string {
	t.Helper()
	v := s.Eval(t, `const e = document.getElementById(arguments[0]); return e ? e.innerText : "";`, id)
	str, _ := v.(string)
	return str
}

// WaitText polls until the element's text satisfies ok, and returns it; it
// fails the test with the last text seen when the deadline passes.
func (s *Session) WaitText(t testing.TB, id string, within time.Duration, ok func(string) bool) string {
	t.Helper()
	deadline := time.Now().Add(within)
	last := ""
	for {
		if v, err := s.eval(`const e = document.getElementById(arguments[0]); return e ? e.innerText : "";`, id); err == nil {
			last, _ = v.(string)
			if ok(last) {
				return last
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("#%s never matched within %v; last text %q", id, within, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Screenshot saves a PNG of the viewport to path.
func (s *Session) Screenshot(t testing.TB, path string) {
	t.Helper()
	var out struct {
		Value string `json:"value"`
	}
	if err := call(s.hc, http.MethodGet, s.base+"/screenshot", nil, &out); err != nil {
		t.Fatal(err)
	}
	png, err := base64.StdEncoding.DecodeString(out.Value)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", path)
}
