package dashboard

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// WebSocket message types (protocol.md §11's reference behaviour).
const (
	WSGetStatus      = "get_status"
	WSStatusResponse = "status_response"
	WSPing           = "ping"
	WSPong           = "pong"
	WSError          = "error"
)

// wsReadLimit bounds one client message: requests are tiny.
const wsReadLimit = 4096

// serveWS carries the same events as SSE as JSON messages
// {"type","id","data"} and answers requests: get_status → status_response,
// ping → pong, anything else → error. Resume with ?last_event_id=.
// The Origin check has already run in guard, so the upgrader accepts.
func (s *Server) serveWS(w http.ResponseWriter, r *http.Request) {
	var connp atomic.Pointer[websocket.Conn]
	v, replay, err := s.hub.subscribe(r.URL.Query().Get("last_event_id"), func() {
		if c := connp.Load(); c != nil {
			_ = c.NetConn().SetWriteDeadline(time.Now()) // unblock a stuck write
		}
	})
	if err != nil {
		subscribeError(w, err)
		return
	}
	s.viewerOpened("ws")
	defer s.viewerClosed("ws", v)
	up := websocket.Upgrader{ReadBufferSize: 1024, WriteBufferSize: 4096, HandshakeTimeout: 10 * time.Second,
		CheckOrigin: func(*http.Request) bool { return true }} // checked by guard
	conn, err := up.Upgrade(w, r, nil)
	if err != nil {
		return // the upgrader has answered
	}
	connp.Store(conn)
	readerDone := make(chan struct{})
	defer func() { conn.Close(); <-readerDone }()
	replies := make(chan []byte, 32)
	go func() {
		defer close(readerDone)
		s.wsRead(r.Context(), conn, v, replies)
	}()

	write := func(f func() error) bool {
		_ = conn.SetWriteDeadline(time.Now().Add(s.o.WriteTimeout))
		if err := f(); err != nil {
			s.writeFailed(v, err)
			return false
		}
		return true
	}
	send := func(ev *Event) bool {
		pm, err := ev.prepared()
		return err == nil && write(func() error { return conn.WritePreparedMessage(pm) })
	}
	for _, ev := range replay {
		if !send(ev) {
			return
		}
	}
	ping := time.NewTicker(s.o.Keepalive)
	defer ping.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-readerDone:
			return
		case <-v.wake:
			evs, closed := s.hub.take(v)
			if closed {
				code, text := websocket.CloseGoingAway, "agent stopping"
				if r := s.hub.closedReason(v); r != dropShutdown {
					code, text = websocket.ClosePolicyViolation, "viewer "+r+"; reconnect"
				}
				_ = conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, text), time.Now().Add(time.Second))
				return
			}
			for _, ev := range evs {
				if !send(ev) {
					return
				}
			}
		case b := <-replies:
			if !write(func() error { return conn.WriteMessage(websocket.TextMessage, b) }) {
				return
			}
		case <-ping.C:
			if conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(s.o.WriteTimeout)) != nil {
				return
			}
		}
	}
}

// wsRead answers the client's requests until the socket closes. A client
// that sends faster than it reads its answers is dropped.
func (s *Server) wsRead(ctx context.Context, conn *websocket.Conn, v *viewer, replies chan<- []byte) {
	conn.SetReadLimit(wsReadLimit)
	alive := 3 * s.o.Keepalive
	_ = conn.SetReadDeadline(time.Now().Add(alive))
	conn.SetPongHandler(func(string) error { return conn.SetReadDeadline(time.Now().Add(alive)) })
	for {
		_, msg, err := conn.ReadMessage()
		if err != nil {
			return
		}
		_ = conn.SetReadDeadline(time.Now().Add(alive))
		reply := s.answerWS(ctx, msg)
		select {
		case replies <- reply:
		default:
			s.hub.drop(v, dropOverflown)
			return
		}
	}
}

// answerWS handles one client message; it never panics on any input.
func (s *Server) answerWS(ctx context.Context, msg []byte) (out []byte) {
	var req struct {
		Type      string `json:"type"`
		RequestID string `json:"request_id"`
	}
	defer func() {
		if p := recover(); p != nil {
			out = mustJSON(wsMessage{Type: WSError, RequestID: req.RequestID, Error: fmt.Sprintf("internal error: %v", p)})
		}
	}()
	if err := json.Unmarshal(msg, &req); err != nil {
		return mustJSON(wsMessage{Type: WSError, Error: `malformed message; send JSON like {"type":"get_status","request_id":"1"}`})
	}
	switch req.Type {
	case WSGetStatus:
		return mustJSON(wsMessage{Type: WSStatusResponse, RequestID: req.RequestID, Data: s.fresh(ctx).Data})
	case WSPing:
		t, _ := json.Marshal(map[string]time.Time{"time": s.o.Now().UTC()})
		return mustJSON(wsMessage{Type: WSPong, RequestID: req.RequestID, Data: t})
	default:
		return mustJSON(wsMessage{Type: WSError, RequestID: req.RequestID,
			Error: fmt.Sprintf("unknown message type %q; known: get_status, ping", truncate(req.Type, 64))})
	}
}

// fresh is the latest status event, or a new one when it is older than Interval.
func (s *Server) fresh(ctx context.Context) *Event {
	ev := s.hub.latest()
	if ev == nil || s.o.Now().Sub(ev.produced) >= s.o.Interval {
		ev = s.produce(ctx)
	}
	return ev
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		return []byte(`{"type":"error","error":"encode reply"}`)
	}
	return b
}
