// Package logging builds the agent's slog.Logger once at startup: JSON with
// a syslog priority prefix under journald, text on a terminal, and plain JSON
// anywhere else. It also defines the log keys every package uses and a small
// rate limiter for noisy retry loops.
package logging

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"

	"github.com/coreos/go-systemd/v22/journal"
)

// Log keys. Use these instead of raw strings.
const (
	KeyComponent = "component"
	KeyErr       = "err"
	KeyAttempt   = "attempt"
	KeyDelay     = "delay"
	KeyURL       = "url"
	KeyPath      = "path"
	KeyRequestID = "request_id"
	KeyClusterID = "cluster_id"
	KeyRelease   = "release"
	KeyState     = "state"
	KeyCount     = "count"
	KeyField     = "field"
	KeyFile      = "file"
	KeyGen       = "generation"

	KeyNamespace         = "namespace"
	KeyReason            = "reason"
	KeyType              = "type" // a protocol message type
	KeyPanic             = "panic"
	KeyStack             = "stack"
	KeyRepeatsSuppressed = "repeats_suppressed"
	KeyAddr              = "addr"
	KeyHost              = "host"
	KeyService           = "service"
	KeyMode              = "mode"
	KeySource            = "source"
	KeyVersion           = "version"
	KeyRevision          = "revision" // a Helm release revision
	KeyIngress           = "ingress"
	KeyIngresses         = "ingresses"
	KeyRoutingMode       = "routing_mode"
)

// Format names accepted in config.
const (
	FormatAuto = "auto"
	FormatJSON = "json"
	FormatText = "text"
)

// Options configure New.
type Options struct {
	Level  slog.Level
	Format string // auto, json or text
	Out    io.Writer
	// Sink, when set, receives every record at Warn or above (the dashboard's
	// "recent problems" list). It must not block.
	Sink func(slog.Record)
	// Journal forces (or, when false with Format auto, detects) journald mode.
	Journal *bool
}

// New returns the logger for the process.
func New(o Options) *slog.Logger {
	if o.Out == nil {
		o.Out = os.Stderr
	}
	underJournal := journal.StderrIsJournalStream
	inJournal := false
	if o.Journal != nil {
		inJournal = *o.Journal
	} else if o.Format == FormatAuto || o.Format == "" {
		inJournal, _ = underJournal()
	}
	hopts := &slog.HandlerOptions{Level: o.Level}
	var h slog.Handler
	switch {
	case inJournal:
		h = newJournalHandler(o.Out, o.Level)
	case o.Format == FormatText || ((o.Format == FormatAuto || o.Format == "") && isTerminal(o.Out)):
		h = slog.NewTextHandler(o.Out, hopts)
	default:
		h = slog.NewJSONHandler(o.Out, hopts)
	}
	if o.Sink != nil {
		h = &teeHandler{Handler: h, sink: o.Sink}
	}
	return slog.New(h)
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// Discard is a logger for tests that do not care about output.
func Discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

// journalHandler writes slog JSON lines prefixed with the syslog priority, so
// journald stores the right PRIORITY and `journalctl -p warning` works.
// The time key is dropped: journald stamps every line itself.
type journalHandler struct {
	slog.Handler
	w *prefixWriter
}

type prefixWriter struct {
	mu     sync.Mutex
	out    io.Writer
	prefix string
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	// Called with p.mu held by journalHandler.Handle.
	if _, err := io.WriteString(p.out, p.prefix); err != nil {
		return 0, err
	}
	return p.out.Write(b)
}

func newJournalHandler(out io.Writer, level slog.Level) *journalHandler {
	w := &prefixWriter{out: out}
	inner := slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level, ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
		if len(groups) == 0 && a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		return a
	}})
	return &journalHandler{Handler: inner, w: w}
}

// Priority maps a slog level to the syslog priority journald understands.
func Priority(l slog.Level) int {
	switch {
	case l >= slog.LevelError:
		return 3
	case l >= slog.LevelWarn:
		return 4
	case l >= slog.LevelInfo:
		return 6
	}
	return 7
}

func (h *journalHandler) Handle(ctx context.Context, r slog.Record) error {
	h.w.mu.Lock()
	defer h.w.mu.Unlock()
	h.w.prefix = fmt.Sprintf("<%d>", Priority(r.Level))
	return h.Handler.Handle(ctx, r)
}

func (h *journalHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &journalHandler{Handler: h.Handler.WithAttrs(as), w: h.w}
}

func (h *journalHandler) WithGroup(name string) slog.Handler {
	return &journalHandler{Handler: h.Handler.WithGroup(name), w: h.w}
}

type teeHandler struct {
	slog.Handler
	sink  func(slog.Record)
	attrs []slog.Attr
}

func (h *teeHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		c := r.Clone()
		c.AddAttrs(h.attrs...)
		h.sink(c)
	}
	return h.Handler.Handle(ctx, r)
}

func (h *teeHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &teeHandler{Handler: h.Handler.WithAttrs(as), sink: h.sink, attrs: append(slices(h.attrs), as...)}
}

func (h *teeHandler) WithGroup(name string) slog.Handler {
	return &teeHandler{Handler: h.Handler.WithGroup(name), sink: h.sink, attrs: h.attrs}
}

func slices(a []slog.Attr) []slog.Attr { return append([]slog.Attr(nil), a...) }
