package localapi

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/localclient"
)

type fixedStatus struct{ st apitype.StatusResponse }

func (f fixedStatus) Status(context.Context) apitype.StatusResponse { return f.st }

func shortDir(t *testing.T) string {
	d, err := os.MkdirTemp("", "po")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func serve(t *testing.T, s *Server) {
	t.Helper()
	ln, err := s.Listen()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve = %v", err)
		}
	})
}

func TestStatusOverARealSocketWithMode0600(t *testing.T) {
	sock := filepath.Join(shortDir(t), "agent.sock")
	s := New(Options{Socket: sock, Status: fixedStatus{apitype.StatusResponse{AgentID: "agent-1", ClusterName: "c"}}})
	serve(t, s)
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode = %v; want 0600", fi.Mode().Perm())
	}
	c := &localclient.Client{Socket: sock}
	st, err := c.Status(context.Background())
	if err != nil || st.AgentID != "agent-1" {
		t.Fatalf("Status = %+v, %v", st, err)
	}
}

func TestMissingSocketIsAgentNotRunning(t *testing.T) {
	c := &localclient.Client{Socket: filepath.Join(shortDir(t), "none.sock")}
	if _, err := c.Status(context.Background()); !errors.Is(err, localclient.ErrAgentNotRunning) {
		t.Fatalf("Status = %v; want ErrAgentNotRunning", err)
	}
}

func TestListenRefusesToDeleteANonSocketAndASecondAgent(t *testing.T) {
	dir := shortDir(t)
	file := filepath.Join(dir, "agent.sock")
	os.WriteFile(file, []byte("precious"), 0o600)
	if _, err := New(Options{Socket: file, Status: fixedStatus{}}).Listen(); err == nil {
		t.Fatal("Listen replaced a regular file")
	}
	if b, _ := os.ReadFile(file); string(b) != "precious" {
		t.Fatal("the regular file was modified")
	}
	sock := filepath.Join(dir, "live.sock")
	serve(t, New(Options{Socket: sock, Status: fixedStatus{}}))
	if _, err := New(Options{Socket: sock, Status: fixedStatus{}}).Listen(); err == nil {
		t.Fatal("a second agent took over a live socket")
	}
	// A stale socket left by a crash is replaced.
	stale := filepath.Join(dir, "stale.sock")
	l, _ := net.Listen("unix", stale)
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	ln, err := New(Options{Socket: stale, Status: fixedStatus{}}).Listen()
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	ln.Close()
}

func TestErrorsCarryCodeAndHint(t *testing.T) {
	sock := filepath.Join(shortDir(t), "agent.sock")
	s := New(Options{Socket: sock, Status: fixedStatus{}})
	s.mux.Handle("GET /v1/fail", Handle(nil, func(*http.Request) (int, error) {
		return 0, &apitype.Error{Code: apitype.CodeNotRegistered, Message: "agent is not registered", Hint: "wait for registration"}
	}))
	serve(t, s)
	err := (&localclient.Client{Socket: sock}).Do(context.Background(), "GET", "/v1/fail", nil, nil)
	var ae *apitype.Error
	if !errors.As(err, &ae) || ae.Code != apitype.CodeNotRegistered || ae.Hint == "" {
		t.Fatalf("Do = %v; want apitype.Error with code and hint", err)
	}
}
