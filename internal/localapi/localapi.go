// Package localapi serves the agent's local API: HTTP/JSON over a unix socket
// (default /run/pipeops/agent.sock, mode 0600) for pipeopsctl. It is never
// reachable over the tunnel. Every route is in one table (routes); JSON
// answers go through Handle and NDJSON streams through Stream. Subsystems
// are reached only through the interfaces declared here; the daemon wires them.
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
	"sync"
	"sync/atomic"
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

// Monitoring is the monitoring stack behind /v1/monitoring (monitor.Manager).
// Install and Uninstall report progress through emit until they end. One
// that refuses to start returns an *apitype.Error before emitting anything
// (monitor.ErrDisabled): the request then gets that error, not a stream.
type Monitoring interface {
	Status() apitype.MonitoringStatus
	Install(ctx context.Context, emit func(apitype.MonitoringEvent)) error
	Uninstall(ctx context.Context, emit func(apitype.MonitoringEvent)) error
}

// HA is high availability across server nodes behind /v1/ha (the daemon's
// elector). StepDown answers an *apitype.Error on a standby.
type HA interface {
	Status(ctx context.Context) apitype.HAStatus
	StepDown() (apitype.HAStatus, error)
}

// errHAOff answers /v1/ha when ha.enabled is false.
var errHAOff = &apitype.Error{Code: apitype.CodeNotFound, Message: "high availability is off on this agent (ha.enabled: false)",
	Hint: "install the agent on every server node with \"pipeopsctl install --ha\" and the same token"}

// Options configure a Server.
type Options struct {
	// Socket is the unix socket's path.
	Socket string
	// Status answers GET /v1/status.
	Status StatusSource
	// Monitoring answers /v1/monitoring and its actions; nil leaves them out.
	Monitoring Monitoring
	// HA answers /v1/ha and /v1/ha/step-down; nil says high availability is off.
	HA  HA
	Log *slog.Logger
}

// Server is the local API.
type Server struct {
	Socket string
	Log    *slog.Logger

	mux *http.ServeMux
}

// New returns a server for o.Socket. It does no I/O.
func New(o Options) *Server {
	s := &Server{Socket: o.Socket, Log: o.Log, mux: http.NewServeMux()}
	for pattern, h := range routes(o) {
		s.mux.Handle(pattern, h)
	}
	return s
}

// routes is the local API, every route in one table. Mutating methods
// require a root (or same-uid) peer (withPeerCheck).
func routes(o Options) map[string]http.Handler {
	r := map[string]http.Handler{
		"GET /v1/status": Handle(o.Log, func(r *http.Request) (apitype.StatusResponse, error) {
			return o.Status.Status(r.Context()), nil
		}),
	}
	r["GET /v1/ha"] = Handle(o.Log, func(r *http.Request) (apitype.HAStatus, error) {
		if o.HA == nil {
			return apitype.HAStatus{}, errHAOff
		}
		return o.HA.Status(r.Context()), nil
	})
	r["POST /v1/ha/step-down"] = Handle(o.Log, func(*http.Request) (apitype.HAStatus, error) {
		if o.HA == nil {
			return apitype.HAStatus{}, errHAOff
		}
		return o.HA.StepDown()
	})
	if m := o.Monitoring; m != nil {
		r["GET /v1/monitoring"] = Handle(o.Log, func(*http.Request) (apitype.MonitoringStatus, error) { return m.Status(), nil })
		r["POST /v1/monitoring/install"] = monitoringAction(o.Log, m, m.Install)
		r["POST /v1/monitoring/uninstall"] = monitoringAction(o.Log, m, m.Uninstall)
	}
	return r
}

// monitoringAction streams an action's progress, so `pipeopsctl monitoring
// install` can show it; the last line has done: true and the final status.
func monitoringAction(log *slog.Logger, m Monitoring, action func(context.Context, func(apitype.MonitoringEvent)) error) http.HandlerFunc {
	return Stream(log, func(r *http.Request, emit func(apitype.MonitoringEvent)) error {
		var started atomic.Bool
		err := action(r.Context(), func(ev apitype.MonitoringEvent) { started.Store(true); emit(ev) })
		if refused := new(*apitype.Error); err != nil && !started.Load() && errors.As(err, refused) {
			return err // answered as an error with its hint, not as a stream
		}
		st := m.Status()
		final := apitype.MonitoringEvent{Time: time.Now(), Done: true, Status: &st}
		if err != nil {
			final.Error = err.Error()
		}
		emit(final)
		return nil
	})
}

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

// Stream adapts a streaming handler to NDJSON (application/x-ndjson): each
// value fn passes to emit is one line, flushed at once, and the stream ends
// when fn returns. emit is safe for concurrent use. An error fn returns
// before its first value is answered as Handle answers errors (status code
// and apitype.Error); once a line was sent the answer is committed, and an
// error only ends the stream (fn reports failures in its last value).
func Stream[T any](log *slog.Logger, fn func(r *http.Request, emit func(T)) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var mu sync.Mutex
		started := false
		start := func() {
			if !started {
				started = true
				w.Header().Set("Content-Type", "application/x-ndjson")
				w.WriteHeader(http.StatusOK)
			}
		}
		fl, _ := w.(http.Flusher)
		enc := json.NewEncoder(w)
		err := fn(r, func(v T) {
			mu.Lock()
			defer mu.Unlock()
			start()
			_ = enc.Encode(v) // the client went away; the work still completes
			if fl != nil {
				fl.Flush()
			}
		})
		mu.Lock()
		defer mu.Unlock()
		switch {
		case err != nil && !started:
			writeError(w, log, err)
		case err != nil:
			if log != nil {
				log.Debug("local API stream ended early", logging.KeyErr, err)
			}
		default:
			start() // an empty stream is still a stream
		}
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
