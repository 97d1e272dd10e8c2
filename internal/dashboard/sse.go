package dashboard

import (
	"net/http"
	"strconv"
	"strings"
	"time"
)

const keepaliveFrame = ": keepalive\n\n"

// sseRetryMillis is the reconnect delay EventSource uses after a drop.
const sseRetryMillis = 2000

// sseFrame encodes an event once as an SSE frame. Data is compact JSON, so
// it holds no newline; any stray CR/LF would still be split into data lines.
func sseFrame(ev *Event) []byte {
	var b strings.Builder
	b.Grow(len(ev.Data) + len(ev.ID) + len(ev.Type) + 24)
	b.WriteString("id: ")
	b.WriteString(ev.ID)
	b.WriteString("\nevent: ")
	b.WriteString(ev.Type)
	b.WriteByte('\n')
	data := strings.ReplaceAll(string(ev.Data), "\r\n", "\n")
	for _, line := range strings.Split(strings.ReplaceAll(data, "\r", "\n"), "\n") {
		b.WriteString("data: ")
		b.WriteString(line)
		b.WriteByte('\n')
	}
	b.WriteByte('\n')
	return []byte(b.String())
}

// serveSSE streams events: first what the viewer missed since Last-Event-ID
// (or the latest status and recent log lines), then every new event, with a
// keepalive comment every Keepalive. A viewer that falls behind is dropped;
// EventSource reconnects and resumes from its last ID.
func (s *Server) serveSSE(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	lastID := r.Header.Get("Last-Event-ID")
	if lastID == "" {
		lastID = r.URL.Query().Get("last_event_id")
	}
	v, replay, err := s.hub.subscribe(lastID, func() {
		// Unblock a write stuck on a viewer that stopped reading.
		_ = rc.SetWriteDeadline(time.Now())
	})
	if err != nil {
		subscribeError(w, err)
		return
	}
	s.viewerOpened("sse")
	defer s.viewerClosed("sse", v)

	h := w.Header()
	h.Set("Content-Type", "text/event-stream; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)

	// write sends frames as they are (no per-viewer copy), then flushes once.
	write := func(frames ...[]byte) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(s.o.WriteTimeout))
		var err error
		for _, b := range frames {
			if _, err = w.Write(b); err != nil {
				break
			}
		}
		if err == nil {
			err = rc.Flush()
		}
		if err != nil {
			s.writeFailed(v, err)
			return false
		}
		return true
	}
	if !write(append([][]byte{[]byte("retry: " + strconv.Itoa(sseRetryMillis) + "\n\n")}, frames(replay)...)...) {
		return
	}
	keep := time.NewTicker(s.o.Keepalive)
	defer keep.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-v.wake:
			evs, closed := s.hub.take(v)
			if closed {
				return
			}
			if !write(frames(evs)...) {
				return
			}
		case <-keep.C:
			if !write([]byte(keepaliveFrame)) {
				return
			}
		}
	}
}

func frames(evs []*Event) [][]byte {
	out := make([][]byte, len(evs))
	for i, ev := range evs {
		out[i] = ev.sse
	}
	return out
}
