package kubeproxy

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/pipeops/pipeops-vm-agent/internal/logging"
	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
)

const (
	// relayQueue is the per-stream control plane → backend queue (§6.8, §6.7).
	relayQueue = 100
	// relayStall is how long a kubectl relay's full queue may hold up the
	// connection's reader before the stream is closed with an error: the
	// agent applies backpressure and never drops bytes silently (§13.23).
	relayStall = 2 * time.Second
	// relayWriteTimeout bounds one write toward the backend.
	relayWriteTimeout = 30 * time.Second
	// maxAppFrame caps app-service relay messages (§2 limits), counted
	// after decompression.
	maxAppFrame = 1 << 20
	// maxKubeFrame caps messages read from the API server.
	maxKubeFrame = 16 << 20
	// kubeWriteBuffer is the write buffer of a relay to the API server. A
	// client's message larger than its buffer leaves as several frames, and
	// the channel protocols' server side (wsstream, on golang.org/x/net/
	// websocket) takes each continuation frame for a message of its own: its
	// first byte is read as a channel number and lost. client-go sizes its
	// buffer for 32 KiB of data plus the channel byte for that reason; the
	// relay keeps room for twice that and splits longer channel messages
	// (channelChunk).
	kubeWriteBuffer = 64 << 10
	// channelChunk is the most data one channel message carries toward the
	// API server: a longer one is split into several on the same channel,
	// which the channel protocols read as the same stream.
	channelChunk = kubeWriteBuffer - 1
	// appPingEvery and appPongWait are the app relay's backend keepalive (§6.7).
	appPingEvery = 30 * time.Second
	appPongWait  = 90 * time.Second
)

// Relay-ending causes that send no proxy_error.
var errCPClosed = errors.New("closed by the control plane")

// wsFrame is one control plane → backend frame.
type wsFrame struct {
	op    int // websocket.TextMessage, BinaryMessage, PingMessage, CloseMessage
	data  []byte
	close bool
}

// relay is one WebSocket relay: a kubectl exec/attach/port-forward stream
// to the API server (§6.8), or an app-service relay (§6.7, app=true).
type relay struct {
	p         *Proxy
	c         protocol.Conn
	id        string
	key       callKey
	app       bool
	channels  bool // a *.channel.k8s.io subprotocol: [channel][bytes] messages
	translate bool // *.channel.k8s.io translation (§6.8 table)
	in        chan wsFrame
	ctx       context.Context
	cancel    context.CancelCauseFunc
	closeOnce sync.Once
}

// newRelay registers a relay synchronously (on the reader goroutine), so
// data that arrives while it dials is queued, not lost.
// A relay lives until deadline (§6.4: the request's deadline or timeout,
// else 24 h), a close from either side, proxy_cancel or the connection's end.
func (p *Proxy) newRelay(c protocol.Conn, id string, app bool, deadline time.Time) *relay {
	ctx, cancel := context.WithCancelCause(c.Context())
	ctx, stopDeadline := context.WithDeadlineCause(ctx, deadline, errDeadline)
	r := &relay{p: p, c: c, id: id, key: callKey{c.Generation(), id}, app: app, in: make(chan wsFrame, relayQueue), ctx: ctx,
		cancel: func(cause error) { cancel(cause); stopDeadline() }}
	m := p.relays
	if app {
		m = p.apps
	}
	p.mu.Lock()
	old := m[r.key]
	m[r.key] = r
	p.mu.Unlock()
	if old != nil {
		old.stop(fmt.Errorf("replaced by a new relay with the same id"))
	}
	p.m.relays(1)
	return r
}

func (r *relay) stop(cause error) { r.cancel(cause) }

// finish unregisters the relay and tells the control plane it ended.
func (r *relay) finish() {
	r.cancel(errShutdown)
	m := r.p.relays
	if r.app {
		m = r.p.apps
	}
	r.p.mu.Lock()
	if m[r.key] == r {
		delete(m, r.key)
	}
	r.p.mu.Unlock()
	r.p.m.relays(-1)
	r.p.release()
	if r.c.Context().Err() != nil || errors.Is(context.Cause(r.ctx), errCancelled) {
		return
	}
	if cause := context.Cause(r.ctx); cause != nil && !quietRelayCause(cause) {
		r.sendError(cause.Error())
	}
	payload := protocol.WebSocketClose{StreamID: r.id}
	if r.app {
		payload.RequestID = r.id
	}
	_ = r.c.Send(r.c.Context(), protocol.TypeProxyWebSocketClose, r.id, payload)
}

func quietRelayCause(err error) bool {
	return errors.Is(err, errShutdown) || errors.Is(err, errCPClosed) || errors.Is(err, errCancelled)
}

// sendError is proxy_error in the relay shape of §4.3.
func (r *relay) sendError(msg string) {
	_ = r.c.Send(r.c.Context(), protocol.TypeProxyError, r.id, protocol.ErrorPayload{RequestID: r.id, Error: msg})
}

// pump runs an open relay until either side ends it.
func (r *relay) pump(ws *websocket.Conn) {
	stopWatch := context.AfterFunc(r.ctx, func() {
		_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
		_ = ws.Close()
	})
	defer stopWatch()
	limit := int64(maxKubeFrame)
	if r.app {
		limit = maxAppFrame
		_ = ws.SetReadDeadline(time.Now().Add(appPongWait))
		ws.SetPongHandler(func(string) error { return ws.SetReadDeadline(time.Now().Add(appPongWait)) })
	}
	ws.SetReadLimit(limit) // counts bytes on the wire; readMessage bounds them inflated
	done := make(chan struct{})
	r.p.goSafe("relay writer", func() {
		defer close(done)
		r.writeLoop(ws)
	})
	err := r.readLoop(ws, limit)
	var big *messageTooLarge
	switch {
	case errors.As(err, &big):
		_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseMessageTooBig, "message too large"), time.Now().Add(time.Second))
		r.cancel(fmt.Errorf("relay %s closed: %w", r.id, err))
	case err != nil && !websocket.IsCloseError(err, websocket.CloseNormalClosure, websocket.CloseGoingAway, websocket.CloseNoStatusReceived) && r.ctx.Err() == nil:
		r.cancel(fmt.Errorf("relay %s: backend connection failed: %w", r.id, err))
	}
	r.cancel(errShutdown)
	<-done
	_ = ws.Close()
}

// messageTooLarge is a backend message past the relay's limit.
type messageTooLarge struct{ limit int64 }

func (e *messageTooLarge) Error() string {
	return fmt.Sprintf("the backend sent a WebSocket message larger than %d bytes (counted after decompression, so a deflate bomb cannot pass)", e.limit)
}

// readMessage reads one message of at most limit bytes, counted after
// decompression: gorilla/websocket's read limit counts compressed bytes,
// and it accepts a permessage-deflate answer the agent never offered, so
// a backend could otherwise inflate a 1 MiB frame to gigabytes.
func readMessage(ws *websocket.Conn, limit int64) (int, []byte, error) {
	mt, rd, err := ws.NextReader()
	if err != nil {
		return mt, nil, err
	}
	data, err := io.ReadAll(io.LimitReader(rd, limit+1))
	if err != nil {
		return mt, nil, err
	}
	if int64(len(data)) > limit {
		return mt, nil, &messageTooLarge{limit: limit}
	}
	return mt, data, nil
}

// readLoop sends backend frames to the control plane. A blocked Send stops
// the reading: backpressure toward the backend instead of a growing queue.
func (r *relay) readLoop(ws *websocket.Conn, limit int64) error {
	for {
		mt, data, err := readMessage(ws, limit)
		if err != nil {
			return err
		}
		if r.app {
			_ = ws.SetReadDeadline(time.Now().Add(appPongWait))
		}
		op := byte(mt)
		if r.translate && mt == websocket.BinaryMessage && len(data) > 0 && data[0] <= 3 {
			op, data = websocket.TextMessage, data[1:] // §6.8: channel byte stripped, sent as text
		}
		frame := make([]byte, 1+len(data))
		frame[0] = op
		copy(frame[1:], data)
		payload := protocol.WebSocketData{StreamID: r.id, Data: base64.StdEncoding.EncodeToString(frame)}
		if r.app {
			payload.RequestID, payload.MessageType = r.id, protocol.FlexInt(op)
		}
		if err := r.c.Send(r.ctx, protocol.TypeProxyWebSocketData, r.id, payload); err != nil {
			return nil // cancelled or connection gone; the cause is already set
		}
		r.p.m.bytesOut(len(data))
	}
}

// writeLoop writes control plane frames to the backend, in order.
func (r *relay) writeLoop(ws *websocket.Conn) {
	var ping <-chan time.Time
	if r.app {
		t := time.NewTicker(appPingEvery)
		defer t.Stop()
		ping = t.C
	}
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-ping:
			if err := ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(relayWriteTimeout)); err != nil {
				r.cancel(fmt.Errorf("relay %s: ping the backend: %w", r.id, err))
				return
			}
		case f := <-r.in:
			if f.close {
				_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(5*time.Second))
				// The backend answers the close and the reader ends; do not wait forever.
				t := time.NewTimer(5 * time.Second)
				select {
				case <-r.ctx.Done():
				case <-t.C:
					r.cancel(errCPClosed)
				}
				t.Stop()
				return
			}
			if err := r.write(ws, f); err != nil {
				r.cancel(fmt.Errorf("relay %s: write to the backend: %w", r.id, err))
				return
			}
			r.p.m.bytesIn(len(f.data))
		}
	}
}

func (r *relay) write(ws *websocket.Conn, f wsFrame) error {
	switch f.op {
	case websocket.PingMessage:
		return ws.WriteControl(websocket.PingMessage, f.data, time.Now().Add(relayWriteTimeout))
	case websocket.PongMessage:
		return nil
	}
	op, data := f.op, f.data
	if r.translate && op == websocket.TextMessage {
		// §6.8: text from the control plane is stdin, channel 0.
		b := make([]byte, 1+len(data))
		copy(b[1:], data)
		op, data = websocket.BinaryMessage, b
	}
	if r.channels && op == websocket.BinaryMessage && len(data) > 1+channelChunk {
		return writeChannelChunks(ws, data)
	}
	_ = ws.SetWriteDeadline(time.Now().Add(relayWriteTimeout))
	return ws.WriteMessage(op, data)
}

// writeChannelChunks writes one [channel][bytes] message as several, each
// small enough to leave as a single frame (kubeWriteBuffer).
func writeChannelChunks(ws *websocket.Conn, data []byte) error {
	msg := make([]byte, 1+channelChunk)
	msg[0] = data[0]
	for rest := data[1:]; len(rest) > 0; {
		n := copy(msg[1:], rest)
		rest = rest[n:]
		_ = ws.SetWriteDeadline(time.Now().Add(relayWriteTimeout))
		if err := ws.WriteMessage(websocket.BinaryMessage, msg[:1+n]); err != nil {
			return err
		}
	}
	return nil
}

// deliver queues one frame from the reader goroutine. A kubectl relay
// waits briefly for room, then closes with an error; an app relay drops
// the frame and sends `backpressure` (§6.7, §4.5).
func (r *relay) deliver(f wsFrame) {
	select {
	case r.in <- f:
		return
	default:
	}
	if r.app && !f.close {
		r.p.log.Debug("app relay queue full; frame dropped", logging.KeyRequestID, r.id)
		id, c := r.id, r.c
		r.p.goSafe("backpressure", func() {
			_ = c.Send(c.Context(), protocol.TypeBackpressure, id, protocol.BackpressurePayload{RequestID: id, Reason: "channel_full"})
		})
		return
	}
	t := time.NewTimer(relayStall)
	defer t.Stop()
	select {
	case r.in <- f:
	case <-r.ctx.Done():
	case <-t.C:
		r.stop(fmt.Errorf("relay %s closed: the backend did not accept data for %s (queue of %d frames full)", r.id, relayStall, relayQueue))
	}
}

// closeFromCP handles proxy_websocket_close / ws_close: close the backend
// with 1000 after the frames already queued.
func (r *relay) closeFromCP() {
	r.closeOnce.Do(func() { r.deliver(wsFrame{close: true}) })
}

// parseFrame decodes base64 [opcode][bytes] (§4.4); when the first byte is
// not an opcode and message_type is set, the whole data is the payload.
func parseFrame(d *protocol.WebSocketData) (wsFrame, error) {
	raw, err := base64.StdEncoding.DecodeString(d.Data)
	if err != nil {
		return wsFrame{}, fmt.Errorf("decode relay data: %w", err)
	}
	if len(raw) > 0 {
		switch raw[0] {
		case 1, 2, 9, 10:
			return wsFrame{op: int(raw[0]), data: raw[1:]}, nil
		case 8:
			return wsFrame{close: true}, nil
		}
	}
	switch d.MessageType {
	case 1, 2:
		return wsFrame{op: int(d.MessageType), data: raw}, nil
	}
	return wsFrame{op: websocket.BinaryMessage, data: raw}, nil
}
