package tunnel

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

// blockingBinary is a narrow fake of the control-plane connection whose
// writes block until ctx ends (a stuck WebSocket writer).
type blockingBinary struct {
	ctx    context.Context
	frames chan []byte
	block  bool
}

func (b *blockingBinary) SendBinary(ctx context.Context, data []byte) error {
	if b.block {
		<-ctx.Done()
		return ctx.Err()
	}
	b.frames <- append([]byte(nil), data...)
	return nil
}
func (b *blockingBinary) Context() context.Context { return b.ctx }

// blockedIn reports whether a goroutine is parked (on a channel or a
// select) with fn on its stack, e.g. a Read waiting for data.
func blockedIn(fn string) bool {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range strings.Split(string(buf), "\n\n") {
		header, _, _ := strings.Cut(g, "\n")
		parked := strings.Contains(header, "[select") || strings.Contains(header, "[chan receive") || strings.Contains(header, "[chan send")
		if parked && strings.Contains(g, fn) {
			return true
		}
	}
	return false
}

func TestFrameConnDeadlinesUnblockReadsAndWrites(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := NewFrameConn(&blockingBinary{ctx: ctx, block: true})

	t.Run("a read past its deadline times out", func(t *testing.T) {
		_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		_, err := c.Read(make([]byte, 10))
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("read = %v, want deadline exceeded", err)
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatal("the error is not a net.Error timeout")
		}
	})
	t.Run("moving the read deadline into the past wakes a blocked read", func(t *testing.T) {
		_ = c.SetReadDeadline(time.Time{})
		done := make(chan error, 1)
		go func() { _, err := c.Read(make([]byte, 10)); done <- err }()
		testbin.Eventually(t, 5*time.Second, "the read blocked", func() bool { return blockedIn("(*FrameConn).Read") })
		_ = c.SetReadDeadline(time.Now().Add(-time.Second))
		select {
		case err := <-done:
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("read = %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("read stayed blocked")
		}
	})
	t.Run("a stuck write returns when its deadline passes", func(t *testing.T) {
		_ = c.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
		if _, err := c.Write([]byte("x")); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("write = %v, want deadline exceeded", err)
		}
		if !os.IsTimeout(os.ErrDeadlineExceeded) {
			t.Fatal("os.IsTimeout must see the write timeout (yamux relies on it)")
		}
	})
	t.Run("a cleared deadline lets data through again", func(t *testing.T) {
		_ = c.SetReadDeadline(time.Time{})
		c.Sink([]byte("hello"))
		buf := make([]byte, 10)
		n, err := c.Read(buf)
		if err != nil || string(buf[:n]) != "hello" {
			t.Fatalf("read = %q, %v", buf[:n], err)
		}
	})
	t.Run("close unblocks a stuck write", func(t *testing.T) {
		_ = c.SetWriteDeadline(time.Time{})
		done := make(chan error, 1)
		go func() { _, err := c.Write([]byte("x")); done <- err }()
		testbin.Eventually(t, 5*time.Second, "the write blocked", func() bool { return blockedIn("(*FrameConn).Write") })
		_ = c.Close()
		select {
		case err := <-done:
			if !errors.Is(err, net.ErrClosed) {
				t.Fatalf("write = %v, want net.ErrClosed", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("write stayed blocked after Close")
		}
	})
}

func TestFrameConnDeliversQueuedFramesInOrderThenEOF(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	c := NewFrameConn(&blockingBinary{ctx: ctx, frames: make(chan []byte, 4)})
	c.Sink([]byte("ab"))
	c.Sink([]byte("cde"))
	cancel() // the connection ends; queued bytes still arrive
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "abcde" {
		t.Fatalf("got %q, %v", got, err)
	}
}

func TestTheBudgetAlwaysGrantsInitialWindowsButCapsGrowth(t *testing.T) {
	b := newBudget(1 << 20)
	a, _ := b.manager()
	s, _ := b.manager()
	if err := a.ReserveMemory(256<<10, 255); err != nil {
		t.Fatal(err)
	}
	if err := a.ReserveMemory(768<<10, 128); err != nil {
		t.Fatalf("growth within the budget refused: %v", err)
	}
	if err := s.ReserveMemory(256<<10, 255); err != nil {
		t.Fatalf("an initial window was refused: %v", err)
	}
	if err := s.ReserveMemory(1, 128); err == nil {
		t.Fatal("growth past the budget was granted")
	}
	a.Done()
	if err := s.ReserveMemory(512<<10, 128); err != nil {
		t.Fatalf("growth refused after another stream released: %v", err)
	}
	s.Done()
	if u := b.used.Load(); u != 0 {
		t.Fatalf("used = %d after every stream ended", u)
	}
}

func TestHeadersRoundTripAndAnomaliesAreReported(t *testing.T) {
	cases := []struct {
		name    string
		h       Header
		anomaly bool
	}{
		{"a Service over TCP", Header{Version: 1, Protocol: ProtoTCP, Port: 80, Name: "web", Namespace: "default", TunnelID: "t-1"}, false},
		{"a forward over UDP", Header{Version: 1, Protocol: ProtoUDP, Name: "dns"}, false},
		{"an unknown version", Header{Version: 2, Protocol: ProtoTCP, Port: 1, Name: "a", Namespace: "b"}, true},
		{"an unknown protocol", Header{Version: 1, Protocol: 9, Port: 1, Name: "a", Namespace: "b"}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b, err := tc.h.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			r := bytes.NewReader(append(b, "payload"...))
			got, err := ReadHeader(r)
			if err != nil || got != tc.h {
				t.Fatalf("ReadHeader = %+v, %v; want %+v", got, err, tc.h)
			}
			rest, _ := io.ReadAll(r)
			if string(rest) != "payload" {
				t.Fatalf("header read consumed payload: %q left", rest)
			}
			if (got.Anomaly() != "") != tc.anomaly {
				t.Fatalf("anomaly = %q", got.Anomaly())
			}
		})
	}
}

// FuzzReadHeader: no input panics, over-reads or allocates past the bounds;
// whatever parses re-encodes to the same bytes.
func FuzzReadHeader(f *testing.F) {
	for _, h := range []Header{
		{Version: 1, Protocol: 1, Port: 80, Name: "web", Namespace: "default", TunnelID: "t"},
		{Version: 1, Protocol: 2, Name: "dns"},
	} {
		b, _ := h.MarshalBinary()
		f.Add(b)
	}
	f.Add([]byte{1, 1, 0})
	f.Add([]byte{1, 1, 0, 80, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		h, err := ReadHeader(r)
		if err != nil {
			if !errors.Is(err, ErrBadHeader) {
				t.Fatalf("error %v does not wrap ErrBadHeader", err)
			}
			return
		}
		consumed := len(data) - r.Len()
		b, err := h.MarshalBinary()
		if err != nil {
			t.Fatalf("parsed header does not re-encode: %v", err)
		}
		if !bytes.Equal(b, data[:consumed]) {
			t.Fatalf("re-encoded %x, parsed from %x", b, data[:consumed])
		}
	})
}

// releasingBinary records the frames handed back to it.
type releasingBinary struct {
	blockingBinary
	released [][]byte
}

func (r *releasingBinary) ReleaseBinary(data []byte) { r.released = append(r.released, data) }

func TestFrameConnHandsEveryFrameBackOnceItWasReadOrDropped(t *testing.T) {
	bin := &releasingBinary{blockingBinary: blockingBinary{ctx: context.Background()}}
	c := NewFrameConn(bin)
	c.Sink([]byte("abc"))
	c.Sink([]byte("de"))
	buf := make([]byte, 2)
	if n, _ := c.Read(buf); string(buf[:n]) != "ab" || len(bin.released) != 0 {
		t.Fatalf("read %q, released %q; want \"ab\" and nothing released while the frame is half read", buf[:n], bin.released)
	}
	if n, _ := c.Read(buf); string(buf[:n]) != "c" || len(bin.released) != 1 || string(bin.released[0]) != "abc" {
		t.Fatalf("read %q, released %q; want \"c\" and the first frame back", buf[:n], bin.released)
	}
	c.Sink([]byte("fg"))
	_ = c.Close() // queued frames go back too
	c.Sink([]byte("late"))
	if len(bin.released) != 4 {
		t.Fatalf("released %q; want all four frames back", bin.released)
	}
}
