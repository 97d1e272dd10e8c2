package devplane

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
	"github.com/pipeops/pipeops-vm-agent/internal/wsconn"
)

// Session kinds.
const (
	KindController = "controller"
	KindGateway    = "gateway"
)

// ErrSessionClosed is returned by sends on an ended session.
var ErrSessionClosed = errors.New("devplane: agent session closed")

type frame struct {
	kind int // websocket.TextMessage, BinaryMessage, PongMessage or CloseMessage
	data []byte
	done chan error
}

// Session is one agent WebSocket (controller or gateway). See the package
// comment for the API other parts use.
type Session struct {
	kind string
	ws   *websocket.Conn
	bc   *wsconn.Conn // the coalescing layer under ws (nil: every frame is its own write)
	out  chan frame
	done chan struct{}

	closeOnce sync.Once

	mu        sync.Mutex
	clusterID string
	subs      map[string]*subscription
	binary    func([]byte)
}

func newSession(kind string, ws *websocket.Conn) *Session {
	s := &Session{kind: kind, ws: ws, bc: wsconn.Find(ws.NetConn()), out: make(chan frame), done: make(chan struct{}), subs: map[string]*subscription{}}
	go s.writeLoop()
	return s
}

// Kind is KindController or KindGateway.
func (s *Session) Kind() string { return s.kind }

// ClusterID is the cluster this session belongs to ("" on a controller
// session before register).
func (s *Session) ClusterID() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.clusterID
}

func (s *Session) setClusterID(id string) {
	s.mu.Lock()
	s.clusterID = id
	s.mu.Unlock()
}

// Done is closed when the session ends.
func (s *Session) Done() <-chan struct{} { return s.done }

// Close ends the session with close code 1000.
func (s *Session) Close() { s.closeWith(websocket.CloseNormalClosure, "") }

// Drop ends the session abruptly, without a close frame (fault injection).
func (s *Session) Drop() { s.shutdown() }

func (s *Session) closeWith(code int, text string) {
	s.control(websocket.CloseMessage, websocket.FormatCloseMessage(code, text), true)
	s.shutdown()
}

// control hands a control frame to the writer (so it cannot bypass or race
// the writer's coalescing buffer), waiting at most a second for the
// hand-off and, when wait is set, for the write.
func (s *Session) control(kind int, data []byte, wait bool) {
	t := time.NewTimer(time.Second)
	defer t.Stop()
	f := frame{kind: kind, data: data, done: make(chan error, 1)}
	select {
	case s.out <- f:
	case <-s.done:
		return
	case <-t.C:
		return
	}
	if !wait {
		return
	}
	select {
	case <-f.done:
	case <-s.done:
	case <-t.C:
	}
}

func (s *Session) shutdown() {
	s.closeOnce.Do(func() {
		close(s.done)
		_ = s.ws.Close()
		s.mu.Lock()
		for id, sub := range s.subs {
			sub.end()
			delete(s.subs, id)
		}
		s.mu.Unlock()
	})
}

// Send writes one JSON envelope.
func (s *Session) Send(ctx context.Context, typ, requestID string, payload any) error {
	b, err := protocol.Encode(typ, requestID, payload, time.Now())
	if err != nil {
		return err
	}
	return s.write(ctx, websocket.TextMessage, b)
}

// SendBinary writes one binary frame.
func (s *Session) SendBinary(ctx context.Context, data []byte) error {
	return s.write(ctx, websocket.BinaryMessage, data)
}

// sendRaw writes arbitrary text (fault injection: garbage).
func (s *Session) sendRaw(ctx context.Context, data []byte) error {
	return s.write(ctx, websocket.TextMessage, data)
}

func (s *Session) write(ctx context.Context, kind int, data []byte) error {
	f := frame{kind: kind, data: data, done: make(chan error, 1)}
	select {
	case s.out <- f:
	case <-s.done:
		return ErrSessionClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	// The writer took the frame (unbuffered hand-off) and always reports;
	// a closed socket makes the write fail at once.
	return <-f.done
}

// writeLoop is the session's only writer. Consecutive frames are
// coalesced into the buffered layer under ws and flushed when no sender
// waits (or the buffer fills); a close frame is flushed at once. A frame's
// done reports its write into that layer.
func (s *Session) writeLoop() {
	var flushBy time.Time // zero: nothing pending
	for {
		var f frame
		select {
		case <-s.done:
			return
		case f = <-s.out:
		default:
			if !flushBy.IsZero() {
				err := s.bc.Flush(flushBy)
				flushBy = time.Time{}
				if err != nil {
					s.shutdown()
					return
				}
			}
			select {
			case <-s.done:
				return
			case f = <-s.out:
			}
		}
		if s.bc != nil {
			s.bc.Begin()
		}
		var err error
		deadline := time.Now().Add(30 * time.Second)
		switch f.kind {
		case websocket.PongMessage:
			deadline = time.Now().Add(5 * time.Second)
			err = s.ws.WriteControl(f.kind, f.data, deadline)
		case websocket.CloseMessage:
			deadline = time.Now().Add(time.Second)
			err = s.ws.WriteControl(f.kind, f.data, deadline)
		default:
			_ = s.ws.SetWriteDeadline(deadline)
			err = s.ws.WriteMessage(f.kind, f.data)
		}
		if s.bc != nil && err == nil {
			if deadline.After(flushBy) {
				flushBy = deadline
			}
			if f.kind == websocket.CloseMessage {
				err = s.bc.Flush(flushBy)
				flushBy = time.Time{}
			}
		}
		f.done <- err
		if err != nil {
			s.shutdown()
			return
		}
	}
}

// Subscribe delivers every later inbound envelope with this request_id.
func (s *Session) Subscribe(requestID string) (<-chan *protocol.Envelope, func()) {
	ch := make(chan *protocol.Envelope, 256)
	s.mu.Lock()
	select {
	case <-s.done:
		close(ch)
		s.mu.Unlock()
		return ch, func() {}
	default:
	}
	if old, ok := s.subs[requestID]; ok {
		old.end()
	}
	sub := &subscription{ch: ch, gone: make(chan struct{})}
	s.subs[requestID] = sub
	s.mu.Unlock()
	return ch, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if cur, ok := s.subs[requestID]; ok && cur == sub {
			sub.end()
			delete(s.subs, requestID)
		}
	}
}

// subscription is one Subscribe. deliver sends under send; end closes gone
// first (which unblocks a waiting deliver) and then ch under send, so a
// send never races with the close.
type subscription struct {
	ch   chan *protocol.Envelope
	gone chan struct{}
	send sync.Mutex
}

func (sub *subscription) end() {
	close(sub.gone)
	sub.send.Lock()
	close(sub.ch)
	sub.send.Unlock()
}

// SetBinaryHandler receives every later inbound binary frame.
func (s *Session) SetBinaryHandler(fn func([]byte)) {
	s.mu.Lock()
	s.binary = fn
	s.mu.Unlock()
}

// deliver hands env to its subscriber, if any. It holds no lock while
// blocked on a full channel, so cancel may run concurrently.
func (s *Session) deliver(env *protocol.Envelope) bool {
	if env.RequestID == "" {
		return false
	}
	s.mu.Lock()
	sub, ok := s.subs[env.RequestID]
	s.mu.Unlock()
	if !ok {
		return false
	}
	sub.send.Lock()
	defer sub.send.Unlock()
	select {
	case <-sub.gone: // cancelled meanwhile
		return true
	default:
	}
	select {
	case sub.ch <- env:
	case <-sub.gone:
	case <-s.done:
	}
	return true
}

func (s *Session) binaryHandler() func([]byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.binary
}
