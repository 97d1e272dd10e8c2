package devplane

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

// FlagPart lets a part file add command-line flags to pipeops-devplane:
// from an init() in its own file, append a function that defines its flags
// on fs and returns a function applying them to the built server before it
// serves. This is the only package-level registry (registration only).
type FlagPart func(fs *flag.FlagSet) (apply func(s *Server) error)

// flagParts are the registered part flags.
var flagParts []FlagPart

// RegisterFlags adds a part's flags (call from init()).
func RegisterFlags(p FlagPart) { flagParts = append(flagParts, p) }

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// Main is pipeops-devplane: it parses args (without the program name),
// serves until ctx ends, and returns the exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("pipeops-devplane", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:8090", "address for the agent endpoints (controller /api/v1/clusters/agent/ws, gateway /ws, REST)")
	adminListen := fs.String("admin-listen", "", "separate address for /admin/ (default: served on --listen)")
	publicURL := fs.String("public-url", "", "base URL agents reach --listen at; gateway_ws_url derives from it (default http(s)://<listen address>)")
	var tokens multiFlag
	fs.Var(&tokens, "token", "accepted install token (repeatable)")
	tokenFile := fs.String("token-file", "", "file with accepted install tokens, one per line")
	tlsCert := fs.String("tls-cert", "", "serve --listen over TLS with this certificate (PEM)")
	tlsKey := fs.String("tls-key", "", "private key for --tls-cert")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	var applies []func(*Server) error
	for _, p := range flagParts {
		applies = append(applies, p(fs))
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *tokenFile != "" {
		b, err := os.ReadFile(*tokenFile)
		if err != nil {
			fmt.Fprintln(stderr, "pipeops-devplane: read --token-file:", err)
			return 2
		}
		for _, l := range strings.Split(string(b), "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
				tokens = append(tokens, l)
			}
		}
	}
	if len(tokens) == 0 {
		fmt.Fprintln(stderr, "pipeops-devplane: no install token: pass --token <token> or --token-file <file>")
		return 2
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintln(stderr, "pipeops-devplane: --log-level:", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(stderr, "pipeops-devplane:", err)
		return 1
	}
	scheme := "http"
	if *tlsCert != "" {
		scheme = "https"
	}
	base := *publicURL
	if base == "" {
		base = scheme + "://" + ln.Addr().String()
	}
	s := New(Config{Tokens: tokens, PublicURL: base, Logger: log})
	for _, apply := range applies {
		if err := apply(s); err != nil {
			ln.Close()
			fmt.Fprintln(stderr, "pipeops-devplane:", err)
			return 2
		}
	}
	main, admin := s.Handler(), http.Handler(nil)
	if *adminListen != "" {
		main, admin = splitAdmin(s.Handler())
	}
	servers := []*http.Server{{Handler: main, ReadHeaderTimeout: 10 * time.Second}}
	errc := make(chan error, 2)
	go func() {
		if *tlsCert != "" {
			errc <- servers[0].ServeTLS(ln, *tlsCert, *tlsKey)
		} else {
			errc <- servers[0].Serve(ln)
		}
	}()
	fmt.Fprintf(stdout, "pipeops-devplane listening on %s (controller %s%s, gateway %s)\n", base, base, ControllerPath, base+GatewayPath)
	if admin != nil {
		aln, err := net.Listen("tcp", *adminListen)
		if err != nil {
			fmt.Fprintln(stderr, "pipeops-devplane: --admin-listen:", err)
			servers[0].Close()
			return 1
		}
		servers = append(servers, &http.Server{Handler: admin, ReadHeaderTimeout: 10 * time.Second})
		go func() { errc <- servers[1].Serve(aln) }()
		fmt.Fprintf(stdout, "admin API on http://%s/admin/clusters\n", aln.Addr())
	} else {
		fmt.Fprintf(stdout, "admin API on %s/admin/clusters\n", base)
	}
	select {
	case <-ctx.Done():
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintln(stderr, "pipeops-devplane:", err)
			return 1
		}
	}
	s.CloseAll()
	for _, hs := range servers {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = hs.Shutdown(sctx)
		cancel()
	}
	return 0
}

// splitAdmin separates /admin/ from the agent-facing routes.
func splitAdmin(h http.Handler) (main, admin http.Handler) {
	isAdmin := func(r *http.Request) bool { return strings.HasPrefix(r.URL.Path, "/admin/") }
	main = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if isAdmin(r) {
			http.NotFound(w, r)
			return
		}
		h.ServeHTTP(w, r)
	})
	admin = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !isAdmin(r) {
			http.NotFound(w, r)
			return
		}
		h.ServeHTTP(w, r)
	})
	return main, admin
}

// CloseAll ends every live session with close code 1000.
func (s *Server) CloseAll() {
	s.mu.Lock()
	all := s.liveSessions()
	s.mu.Unlock()
	for _, sess := range all {
		sess.Close()
	}
}
