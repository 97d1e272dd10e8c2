// Package statusserver is the loopback HTTP server of protocol.md §11:
// /health (liveness), /ready (the truth: 503 with reasons until the control
// plane and the Kubernetes API are reachable), /version and /metrics. The
// dashboard adds its routes through Handle. It never proxies to Kubernetes.
package statusserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pipeops/pipeops-vm-agent/internal/health"
	"github.com/pipeops/pipeops-vm-agent/internal/version"
)

// LinkState reports the control-plane link for /health's compatibility fields.
type LinkState interface {
	// Link returns connection state (connected, reconnecting, …) and whether the agent is registered.
	Link() (state string, registered bool)
}

// Server is the loopback status server.
type Server struct {
	Addr     string
	Health   *health.Tracker
	Link     LinkState
	Gatherer prometheus.Gatherer
	Log      *slog.Logger

	// LoopbackOnly refuses requests whose Host is a DNS name other than
	// localhost (DNS rebinding), as the dashboard does. New sets it when the
	// server binds to a loopback address.
	LoopbackOnly bool

	mux *http.ServeMux
	now func() time.Time
}

// New builds the server; it does no I/O.
func New(bind string, port int, h *health.Tracker, link LinkState, g prometheus.Gatherer, log *slog.Logger) *Server {
	s := &Server{Addr: net.JoinHostPort(bind, strconv.Itoa(port)), Health: h, Link: link, Gatherer: g, Log: log, mux: http.NewServeMux(), now: time.Now,
		LoopbackOnly: IsLoopback(bind)}
	s.mux.Handle("GET /health", s.guard(http.HandlerFunc(s.health)))
	s.mux.Handle("GET /ready", s.guard(http.HandlerFunc(s.ready)))
	s.mux.Handle("GET /version", s.guard(http.HandlerFunc(s.version)))
	s.mux.Handle("GET /metrics", s.guard(promhttp.HandlerFor(g, promhttp.HandlerOpts{})))
	return s
}

// guard applies the dashboard's Host check: on a loopback bind, a web page
// that rebinds its own DNS name to 127.0.0.1 must not read /metrics (which
// names clusters, routes and errors) or the other endpoints.
func (s *Server) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.LoopbackOnly && !LoopbackHost(r.Host) {
			http.Error(w, "unexpected Host header "+r.Host+
				"; ask for http://127.0.0.1:<port>/ or http://localhost:<port>/ (DNS-rebinding protection)", http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// IsLoopback reports whether a bind address listens on loopback only.
func IsLoopback(bind string) bool {
	if bind == "localhost" {
		return true
	}
	ip := net.ParseIP(bind)
	return ip != nil && ip.IsLoopback()
}

// LoopbackHost accepts IP literals (an SSH tunnel or a direct loopback
// address) and localhost names: never a DNS name that could be rebound.
func LoopbackHost(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if net.ParseIP(host) != nil {
		return true
	}
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	return host == "localhost" || strings.HasSuffix(host, ".localhost")
}

// Handle adds a route (the dashboard).
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// Handler is the full route table (tests).
func (s *Server) Handler() http.Handler { return s.mux }

// Listen binds the address; done before READY so a port clash fails start-up.
func (s *Server) Listen() (net.Listener, error) {
	ln, err := net.Listen("tcp", s.Addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s (set agent.port or PIPEOPS_PORT to use another port): %w", s.Addr, err)
	}
	return ln, nil
}

// Serve answers until ctx ends, then drains for up to 10 s.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{Handler: s.mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 120 * time.Second,
		BaseContext: func(net.Listener) context.Context { return ctx }}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func (s *Server) linkState() (string, bool) {
	if s.Link == nil {
		return "disconnected", false
	}
	return s.Link.Link()
}

// health is liveness: 200 while the process works. Field names follow the
// reference agent's.
func (s *Server) health(w http.ResponseWriter, _ *http.Request) {
	state, registered := s.linkState()
	writeJSON(w, http.StatusOK, map[string]any{
		"status": "healthy", "timestamp": s.now().UTC().Format(time.RFC3339Nano), "version": version.Version,
		"connected": state == "connected", "registered": registered, "connection_state": state,
	})
}

// ready tells the truth: 503 not_ready with the reasons until every
// required condition holds.
func (s *Server) ready(w http.ResponseWriter, _ *http.Request) {
	state, registered := s.linkState()
	ok, reasons := s.Health.Ready()
	body := map[string]any{"connected": state == "connected", "registered": registered, "connection_state": state,
		"timestamp": s.now().UTC().Format(time.RFC3339Nano)}
	if ok {
		body["status"], body["healthy"] = "ready", true
		writeJSON(w, http.StatusOK, body)
		return
	}
	body["status"], body["healthy"], body["reason"], body["reasons"] = "not_ready", false, reasons[0], reasons
	writeJSON(w, http.StatusServiceUnavailable, body)
}

func (s *Server) version(w http.ResponseWriter, _ *http.Request) {
	v := version.Get()
	writeJSON(w, http.StatusOK, map[string]any{
		"version": v.Version, "git_commit": v.GitCommit, "build_date": v.BuildDate, "go_version": v.GoVersion,
		"full_version": v.String(), "timestamp": s.now().UTC().Format(time.RFC3339Nano),
	})
}
