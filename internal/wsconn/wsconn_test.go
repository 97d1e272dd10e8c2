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
