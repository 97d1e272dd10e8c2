package dashboard

import (
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// Event types sent to viewers.
const (
	EventStatus = "status"
	EventLog    = "log"
)

// Event is one message of the stream. Its wire forms (an SSE frame and a
// WebSocket JSON message) are encoded once, whatever the number of viewers.
type Event struct {
	ID   string
	Type string
	Data json.RawMessage

	seq      uint64
	sse      []byte
	wsOnce   sync.Once
	wsMsg    *websocket.PreparedMessage
	wsErr    error
	produced time.Time
}

// wsMessage is the JSON message of the WebSocket transport.
type wsMessage struct {
	Type      string          `json:"type"`
	ID        string          `json:"id,omitempty"`
	RequestID string          `json:"request_id,omitempty"`
	Data      json.RawMessage `json:"data,omitempty"`
	Error     string          `json:"error,omitempty"`
}

// prepared is the WebSocket frame of the event, built on first use and shared.
func (e *Event) prepared() (*websocket.PreparedMessage, error) {
	e.wsOnce.Do(func() {
		b, err := json.Marshal(wsMessage{Type: e.Type, ID: e.ID, Data: e.Data})
		if err != nil {
			e.wsErr = err
			return
		}
		e.wsMsg, e.wsErr = websocket.NewPreparedMessage(websocket.TextMessage, b)
	})
	return e.wsMsg, e.wsErr
}

var (
	errClosed     = errors.New("the dashboard is shutting down")
	errTooMany    = errors.New("too many dashboard viewers; close another tab and retry")
	dropSlow      = "slow"
	dropShutdown  = "shutdown"
	dropUnsubbed  = "gone"
	dropOverflown = "request flood"
)

// viewer is one connected page. What waits for it is bounded: the latest
// status only (a newer snapshot replaces an unsent one) and at most
// hub.bufSize log events; a viewer further behind than that is dropped, and
// a write that blocks for WriteTimeout ends its stream too. Nothing is
// buffered without bound.
type viewer struct {
	wake   chan struct{} // signalled when something is pending; closed on drop
	onDrop func()        // unblocks the viewer's writer; called once, under the hub lock
	// Guarded by hub.mu.
	status *Event
	logs   []*Event
	closed bool
	reason string // why the viewer was closed
}

// hub fans events out to viewers and keeps what a (re)connecting viewer needs:
// the latest status and the recent log events, numbered within one epoch.
type hub struct {
	mu      sync.Mutex
	epoch   string
	seq     uint64
	status  *Event
	logs    []*Event // oldest first, at most logCap
	logCap  int
	viewers map[*viewer]struct{}
	bufSize int
	max     int
	closed  bool
	kick    chan struct{} // asks the producer for a fresh snapshot
	onDrop  func(reason string)
}

func newHub(bufSize, max, logCap int, now time.Time) *hub {
	return &hub{epoch: strconv.FormatInt(now.UnixNano(), 36), viewers: map[*viewer]struct{}{},
		bufSize: bufSize, max: max, logCap: logCap, kick: make(chan struct{}, 1)}
}

// publish numbers ev, keeps it for replay and offers it to every viewer.
func (h *hub) publish(typ string, data json.RawMessage, now time.Time) *Event {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.seq++
	ev := &Event{ID: h.epoch + "-" + strconv.FormatUint(h.seq, 10), Type: typ, Data: data, seq: h.seq, produced: now}
	ev.sse = sseFrame(ev)
	switch typ {
	case EventStatus:
		h.status = ev
	default:
		if len(h.logs) == h.logCap {
			copy(h.logs, h.logs[1:])
			h.logs = h.logs[:len(h.logs)-1]
		}
		h.logs = append(h.logs, ev)
	}
	for v := range h.viewers {
		if typ == EventStatus {
			v.status = ev
		} else {
			if len(v.logs) >= h.bufSize {
				h.dropLocked(v, dropSlow)
				continue
			}
			v.logs = append(v.logs, ev)
		}
		select {
		case v.wake <- struct{}{}:
		default: // already signalled
		}
	}
	return ev
}

// subscribe adds a viewer and returns what it missed since lastID: the log
// events after it and the latest status, oldest first. An ID from another
// epoch (an earlier agent process) or none at all replays everything kept.
func (h *hub) subscribe(lastID string, onDrop func()) (*viewer, []*Event, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, nil, errClosed
	}
	if len(h.viewers) >= h.max {
		return nil, nil, errTooMany
	}
	after := h.parseID(lastID)
	var replay []*Event
	for _, ev := range h.logs {
		if ev.seq > after {
			replay = append(replay, ev)
		}
	}
	if st := h.status; st != nil && st.seq > after {
		i := len(replay)
		for i > 0 && replay[i-1].seq > st.seq {
			i--
		}
		replay = append(replay[:i], append([]*Event{st}, replay[i:]...)...)
	}
	v := &viewer{wake: make(chan struct{}, 1), onDrop: onDrop}
	h.viewers[v] = struct{}{}
	select {
	case h.kick <- struct{}{}: // a new viewer gets a fresh snapshot at once
	default:
	}
	return v, replay, nil
}

func (h *hub) parseID(id string) uint64 {
	epoch, n, ok := strings.Cut(id, "-")
	if !ok || epoch != h.epoch {
		return 0
	}
	seq, err := strconv.ParseUint(n, 10, 64)
	if err != nil || seq > h.seq {
		return 0
	}
	return seq
}

func (h *hub) unsubscribe(v *viewer) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.dropLocked(v, dropUnsubbed)
}

// take returns what is pending for v, oldest first, and whether v was closed
// (then nothing more is to be sent).
func (h *hub) take(v *viewer) ([]*Event, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if v.closed {
		return nil, true
	}
	out := v.logs
	v.logs = nil
	if st := v.status; st != nil {
		i := len(out)
		for i > 0 && out[i-1].seq > st.seq {
			i--
		}
		out = append(out[:i], append([]*Event{st}, out[i:]...)...)
		v.status = nil
	}
	return out, false
}

// closedReason is why v was closed ("" while it is open).
func (h *hub) closedReason(v *viewer) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return v.reason
}

// drop removes a viewer from outside the fan-out (a request flood on its socket).
func (h *hub) drop(v *viewer, reason string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.dropLocked(v, reason)
}

func (h *hub) dropLocked(v *viewer, reason string) {
	if v.closed {
		return
	}
	v.closed, v.reason = true, reason
	v.status, v.logs = nil, nil
	delete(h.viewers, v)
	close(v.wake)
	if reason != dropUnsubbed && reason != dropShutdown {
		if v.onDrop != nil {
			v.onDrop()
		}
		if h.onDrop != nil {
			h.onDrop(reason)
		}
	}
}

// close ends every viewer's stream and refuses new ones.
func (h *hub) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	for v := range h.viewers {
		h.dropLocked(v, dropShutdown)
	}
}

func (h *hub) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.viewers)
}

// latest is the newest status event, or nil before the first snapshot.
func (h *hub) latest() *Event {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.status
}

// recentLogs returns the log events kept for replay, oldest first.
func (h *hub) recentLogs() []*Event {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]*Event(nil), h.logs...)
}
