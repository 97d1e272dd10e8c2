package controlplane

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// The writer coalesces frames that are queued together into one flush,
// and flushes a lone frame without waiting for more.
func TestWriterCoalescesQueuedFramesAndFlushesALoneFrame(t *testing.T) {
	got := make(chan []byte, 64)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer ws.Close()
		for {
			_, b, err := ws.ReadMessage()
			if err != nil {
				return
			}
			got <- b
		}
	}))
	defer srv.Close()
	a := newAgent(t, testConfig(srv.URL), nil, &fakeCluster{}, nil)
	ws, _, err := a.c.dialer.DialContext(context.Background(), "ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		t.Fatal(err)
	}
	cn := newConn(context.Background(), a.c, 1, ModeGateway, "", ws)
	defer cn.close(websocket.CloseNormalClosure, "")
	if cn.bc == nil {
		t.Fatal("the dialed connection has no coalescing layer")
	}
	n := cap(cn.out)
	for i := 0; i < n; i++ { // queued before the writer starts
		cn.out <- outFrame{kind: websocket.BinaryMessage, data: []byte{byte(i)}}
	}
	cn.start(1<<20, time.Minute, time.Hour)
	recv := func(want []byte) {
		t.Helper()
		select {
		case b := <-got:
			if string(b) != string(want) {
				t.Fatalf("got %q, want %q", b, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("frame %q never arrived", want)
		}
	}
	for i := 0; i < n; i++ {
		recv([]byte{byte(i)})
	}
	if f := cn.bc.Flushes(); f != 1 {
		t.Fatalf("%d queued frames took %d flushes, want 1", n, f)
	}
	if err := cn.SendBinary(context.Background(), []byte("lone")); err != nil {
		t.Fatal(err)
	}
	recv([]byte("lone"))
	if f := cn.bc.Flushes(); f != 2 {
		t.Fatalf("flushes after a lone frame = %d, want 2", f)
	}
}
