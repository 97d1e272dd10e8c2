package wsconn

import (
	"bytes"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// countConn counts Write calls.
type countConn struct {
	net.Conn
	mu     sync.Mutex
	writes int
	buf    bytes.Buffer
}

func (c *countConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.writes++
	return c.buf.Write(p)
}
func (c *countConn) SetWriteDeadline(time.Time) error { return nil }
func (c *countConn) Close() error                     { return nil }

func TestBatchedWritesReachTheConnectionInOneWriteAndInOrder(t *testing.T) {
	cc := &countConn{}
	c := New(cc)
	_, _ = c.Write([]byte("a")) // outside a batch: straight through
	if cc.writes != 1 {
		t.Fatalf("unbatched write took %d writes", cc.writes)
	}
	c.Begin()
	for _, s := range []string{"b", "c", "d"} {
		_, _ = c.Write([]byte(s))
	}
	if cc.writes != 1 || c.Buffered() != 3 {
		t.Fatalf("batched writes reached the connection early: %d writes, %d buffered", cc.writes, c.Buffered())
	}
	if err := c.Flush(time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if cc.writes != 2 || cc.buf.String() != "abcd" || c.Flushes() != 1 {
		t.Fatalf("writes %d, data %q, flushes %d", cc.writes, cc.buf.String(), c.Flushes())
	}
	c.Begin()
	_, _ = c.Write([]byte("e"))
	_ = c.Close() // pending bytes are not lost on close
	if cc.buf.String() != "abcde" {
		t.Fatalf("data after close %q", cc.buf.String())
	}
	if Find(c) != c || Find(cc) != nil {
		t.Fatal("Find")
	}
}

func TestReadMessageReturnsExactCopiesOfSmallAndLargeMessages(t *testing.T) {
	msgs := [][]byte{[]byte("small"), bytes.Repeat([]byte("x"), 300<<10), {}, []byte("after")}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer ws.Close()
		for _, m := range msgs {
			_ = ws.WriteMessage(websocket.BinaryMessage, m)
		}
		_, _, _ = ws.ReadMessage()
	}))
	defer srv.Close()
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	var kept [][]byte
	for range msgs {
		kind, b, err := ReadMessage(ws)
		if err != nil || kind != websocket.BinaryMessage {
			t.Fatal(kind, err)
		}
		kept = append(kept, b)
	}
	for i, m := range msgs {
		if !bytes.Equal(kept[i], m) || cap(kept[i]) != len(m) {
			t.Fatalf("message %d: %d bytes (cap %d), want %d", i, len(kept[i]), cap(kept[i]), len(m))
		}
	}
}

func TestALargeWriteOfABatchGoesOutAfterTheBufferedBytesUncopied(t *testing.T) {
	cc := &countConn{}
	c := New(cc)
	c.Begin()
	large := bytes.Repeat([]byte("L"), directMin)
	for _, p := range [][]byte{[]byte("a"), large, []byte("b")} {
		if _, err := c.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	if got := cc.buf.String(); got != "a"+string(large) {
		t.Fatalf("before Flush the connection has %d bytes; want the small write and the large one", len(got))
	}
	if err := c.Flush(time.Time{}); err != nil {
		t.Fatal(err)
	}
	if got := cc.buf.String(); got != "a"+string(large)+"b" {
		t.Fatalf("the connection got %d bytes out of order", len(got))
	}
}

func TestAnOwnedMessageIsTheReadBufferAndSmallOnesAreCopies(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer ws.Close()
		_ = ws.WriteMessage(websocket.BinaryMessage, bytes.Repeat([]byte("x"), ownMin))
		_ = ws.WriteMessage(websocket.BinaryMessage, []byte("small"))
		_ = ws.WriteMessage(websocket.TextMessage, bytes.Repeat([]byte("t"), ownMin))
		_, _, _ = ws.ReadMessage()
	}))
	defer srv.Close()
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	binary := func(kind int) bool { return kind == websocket.BinaryMessage }
	for _, want := range []struct {
		n     int
		owned bool
	}{{ownMin, true}, {5, false}, {ownMin, false}} {
		_, b, err := ReadMessageOwned(ws, binary)
		if err != nil {
			t.Fatal(err)
		}
		if owned := cap(b) >= readBufSize; len(b) != want.n || owned != want.owned {
			t.Errorf("message of %d bytes (cap %d); want %d bytes, handed over in the read buffer: %v", len(b), cap(b), want.n, want.owned)
		}
		Release(b)
	}
}
