package dashboard

import (
	"log/slog"
	"sync"
	"time"
)

// Limits on what one log line may carry onto the page.
const (
	maxMsgLen   = 1024
	maxAttrLen  = 512
	maxAttrs    = 24
	defaultLogs = 200
)

// LogLine is one warn-or-worse record as the page shows it. Attribute values
// are resolved through slog.LogValuer, so config.Secret prints redacted.
type LogLine struct {
	Time  time.Time         `json:"time"`
	Level string            `json:"level"`
	Msg   string            `json:"msg"`
	Attrs map[string]string `json:"attrs,omitempty"`
}

// LogBuffer keeps the most recent warn+ log records. Its Add method is a
// logging.Options.Sink: it never blocks on viewers; the dashboard's producer
// picks new lines up and fans them out.
type LogBuffer struct {
	mu      sync.Mutex
	lines   []LogLine // ring of cap entries
	next    uint64    // sequence number of the next line (first is 1)
	changed chan struct{}
}

// NewLogBuffer keeps the last n lines (200 when n <= 0).
func NewLogBuffer(n int) *LogBuffer {
	if n <= 0 {
		n = defaultLogs
	}
	return &LogBuffer{lines: make([]LogLine, 0, n), next: 1, changed: make(chan struct{})}
}

// Add records r when it is at Warn or above. It is safe for concurrent use.
func (b *LogBuffer) Add(r slog.Record) {
	if r.Level < slog.LevelWarn {
		return
	}
	line := LogLine{Time: r.Time, Level: r.Level.String(), Msg: truncate(r.Message, maxMsgLen)}
	r.Attrs(func(a slog.Attr) bool {
		addAttr(&line, "", a)
		return len(line.Attrs) < maxAttrs
	})
	b.mu.Lock()
	if len(b.lines) < cap(b.lines) {
		b.lines = append(b.lines, line)
	} else {
		b.lines[int((b.next-1)%uint64(cap(b.lines)))] = line
	}
	b.next++
	close(b.changed)
	b.changed = make(chan struct{})
	b.mu.Unlock()
}

func addAttr(l *LogLine, prefix string, a slog.Attr) {
	v := a.Value.Resolve()
	key := prefix + a.Key
	if v.Kind() == slog.KindGroup {
		for _, g := range v.Group() {
			if len(l.Attrs) >= maxAttrs {
				return
			}
			addAttr(l, key+".", g)
		}
		return
	}
	if l.Attrs == nil {
		l.Attrs = map[string]string{}
	}
	l.Attrs[key] = truncate(v.String(), maxAttrLen)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// Since returns the lines after sequence number seq (oldest first) and the
// sequence number of the newest line. Lines that fell out of the ring are lost.
func (b *LogBuffer) Since(seq uint64) ([]LogLine, uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	newest := b.next - 1
	if seq >= newest {
		return nil, newest
	}
	oldest := uint64(1)
	if n := uint64(len(b.lines)); newest > n {
		oldest = newest - n + 1
	}
	if seq+1 > oldest {
		oldest = seq + 1
	}
	out := make([]LogLine, 0, newest-oldest+1)
	for s := oldest; s <= newest; s++ {
		out = append(out, b.lines[int((s-1)%uint64(cap(b.lines)))])
	}
	return out, newest
}

// Changed returns a channel closed at the next Add.
func (b *LogBuffer) Changed() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.changed
}
