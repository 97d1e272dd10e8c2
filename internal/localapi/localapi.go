// Package localapi serves the agent's local API: HTTP/JSON over a unix socket
// (default /run/pipeops/agent.sock, mode 0600) for pipeopsctl. It is never
// reachable over the tunnel. Subsystems are reached only through the
// interfaces declared here; the daemon wires them.
package localapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/logging"
	"github.com/pipeops/pipeops-vm-agent/internal/version"
)

// StatusSource produces the status snapshot.
type StatusSource interface {
	Status(ctx context.Context) apitype.StatusResponse
}

// Server is the local API. Extra routes (monitoring actions, …) are added
// with Handle before Serve.
type Server struct {
	Socket string
	Status StatusSource
	Log    *slog.Logger

	mux *http.ServeMux
}

// New returns a server for socket. It does no I/O.
func New(socket string, status StatusSource, log *slog.Logger) *Server {
	s := &Server{Socket: socket, Status: status, Log: log, mux: http.NewServeMux()}
	s.mux.Handle("GET /v1/status", Handle(s.Log, func(r *http.Request) (apitype.StatusResponse, error) {
		return s.Status.Status(r.Context()), nil
	}))
	return s
}

// Handle registers an extra route, e.g. "POST /v1/monitoring/install".
// Mutating methods require a root (or same-uid) peer.
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// Listen creates the socket (0600), replacing a stale socket left by a crash
// but refusing to delete anything that is not a socket.
func (s *Server) Listen() (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(s.Socket), 0o700); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	if fi, err := os.Lstat(s.Socket); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket; remove it or set agent.socket", s.Socket)
		}
		if c, err := net.DialTimeout("unix", s.Socket, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("another pipeops-agent is serving %s; stop it first (systemctl stop pipeops-agent)", s.Socket)
		}
		os.Remove(s.Socket)
	}
	old := syscall.Umask(0o077)
	ln, err := net.Listen("unix", s.Socket)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", s.Socket, err)
	}
	if err := os.Chmod(s.Socket, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// Serve answers requests until ctx ends, then shuts down within 5 s.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           s.withPeerCheck(s.mux),
		ReadHeaderTimeout: 5 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ConnContext:       withPeer,
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	err := srv.Shutdown(sctx)
	os.Remove(s.Socket)
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

type peerKey struct{}

// withPeer records the connecting process's uid (SO_PEERCRED).
func withPeer(ctx context.Context, c net.Conn) context.Context {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return ctx
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return ctx
	}
	var cred *syscall.Ucred
	_ = raw.Control(func(fd uintptr) {
		cred, _ = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	})
	if cred == nil {
		return ctx
	}
	return context.WithValue(ctx, peerKey{}, cred.Uid)
}

// withPeerCheck lets anyone who can open the socket read, but requires root
// or the agent's own uid for anything that changes state.
func (s *Server) withPeerCheck(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(apitype.VersionHeader, version.Version)
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			uid, ok := r.Context().Value(peerKey{}).(uint32)
			if !ok || (uid != 0 && int(uid) != os.Getuid()) {
				writeError(w, s.Log, &apitype.Error{Code: apitype.CodeAccessDenied, Message: "this action needs root", Hint: "run it with sudo"})
				return
			}
		}
		h.ServeHTTP(w, r)
	})
}

// HTTPStatuser lets an error choose its status code.
type HTTPStatuser interface{ HTTPStatus() int }

// Handle adapts a (T, error) function to HTTP. It is the only place that
// writes JSON bodies or chooses status codes for the local API.
func Handle[T any](log *slog.Logger, fn func(*http.Request) (T, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		v, err := fn(r)
		if err != nil {
			writeError(w, log, err)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(v) // the client went away; nothing left to tell it
	}
}

func writeError(w http.ResponseWriter, log *slog.Logger, err error) {
	status := http.StatusInternalServerError
	var ae *apitype.Error
	var hs HTTPStatuser
	switch {
	case errors.As(err, &hs):
		status = hs.HTTPStatus()
	case errors.As(err, &ae):
		status = statusOf(ae.Code)
	}
	if ae == nil {
		ae = &apitype.Error{Code: apitype.CodeInternal, Message: err.Error(), Hint: "see journalctl -u pipeops-agent"}
		if status == http.StatusInternalServerError && log != nil {
			log.Error("local API request failed", logging.KeyErr, err)
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(ae)
}

func statusOf(code string) int {
	switch code {
	case apitype.CodeNotFound:
		return http.StatusNotFound
	case apitype.CodeAccessDenied:
		return http.StatusForbidden
	case apitype.CodeBadRequest:
		return http.StatusBadRequest
	case apitype.CodeUnavailable, apitype.CodeNotRegistered:
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}
