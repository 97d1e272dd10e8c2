package tunnel

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/devplane"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

func TestTCPEchoThroughTheTunnelReachesAConfiguredForward(t *testing.T) {
	echo := echoServer(t)
	r := startRig(t, Config{Forwards: map[string]string{"echo": echo}}, nil, devplane.TunnelOptions{})
	c := r.open(t, devplane.TunnelTarget{Service: "echo"})

	msg := make([]byte, 1<<20)
	_, _ = rand.Read(msg)
	go func() { _, _ = c.Write(msg); _ = c.Close() }() // Close on a hashicorp stream is a half-close
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo returned %d bytes, want the %d sent", len(got), len(msg))
	}
	testbin.Eventually(t, 5*time.Second, "bytes counted both ways", func() bool {
		st := r.mgr.Status()
		return st.BytesIn == int64(len(msg)) && st.BytesOut == int64(len(msg)) && st.ActiveStreams == 0
	})
	if v := counter(t, r.reg, "pipeops_agent_yamux_streams_accepted_total", "", ""); v != 1 {
		t.Errorf("streams accepted = %v, want 1", v)
	}
	if st := r.mgr.Status(); !st.Active || len(st.Forwards) != 1 || st.Forwards[0].Name != "echo" {
		t.Errorf("status = %+v, want active with the echo forward", st)
	}
}

func TestHalfCloseFromTheGatewayLetsTheTargetAnswerAfterEOF(t *testing.T) {
	// The target reads until EOF, then answers and closes: this works only
	// if the gateway's FIN becomes CloseWrite on the target and the answer
	// still flows back.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		n, _ := io.Copy(io.Discard, c)
		fmt.Fprintf(c, "got %d bytes", n)
	}()
	r := startRig(t, Config{Forwards: map[string]string{"counter": ln.Addr().String()}}, nil, devplane.TunnelOptions{})
	c := r.open(t, devplane.TunnelTarget{Service: "counter"})
	if _, err := c.Write(make([]byte, 300000)); err != nil {
		t.Fatal(err)
	}
	_ = c.Close() // FIN: write side only
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read after half-close: %v", err)
	}
	if string(got) != "got 300000 bytes" {
		t.Fatalf("target answered %q", got)
	}
}

func TestAThousandConcurrentStreamsEachEchoTheirOwnData(t *testing.T) {
	echo := echoServer(t)
	r := startRig(t, Config{Forwards: map[string]string{"echo": echo}}, nil, devplane.TunnelOptions{})
	const n = 1000
	conns := make([]net.Conn, n)
	for i := range conns {
		conns[i] = r.open(t, devplane.TunnelTarget{Service: "echo", TunnelID: fmt.Sprint(i)})
	}
	for i, c := range conns {
		if _, err := fmt.Fprintf(c, "stream %04d;", i); err != nil {
			t.Fatalf("write stream %d: %v", i, err)
		}
	}
	testbin.Eventually(t, 20*time.Second, "1000 streams active at once", func() bool { return r.mgr.Status().ActiveStreams == n })
	for i, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, len("stream 0000;"))
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatalf("read stream %d: %v", i, err)
		}
		if want := fmt.Sprintf("stream %04d;", i); string(buf) != want {
			t.Fatalf("stream %d got %q, want %q", i, buf, want)
		}
		_ = c.Close()
	}
	testbin.Eventually(t, 20*time.Second, "every stream closed", func() bool { return r.mgr.Status().ActiveStreams == 0 })
	if e := r.mgr.Status().Errors; e != 0 {
		t.Errorf("errors = %d, want 0", e)
	}
}

func TestAnIdleStreamIsClosedAfterTheInactivityTimeout(t *testing.T) {
	echo := echoServer(t)
	r := startRig(t, Config{Forwards: map[string]string{"echo": echo}, InactivityTimeout: 300 * time.Millisecond}, nil, devplane.TunnelOptions{})
	c := r.open(t, devplane.TunnelTarget{Service: "echo"})
	// Traffic keeps it open past the timeout.
	var last time.Time
	for i := 0; i < 4; i++ {
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 1)
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatalf("stream closed while active (round %d): %v", i, err)
		}
		last = time.Now()
		time.Sleep(150 * time.Millisecond) // what is tested: a pause shorter than the timeout between bursts of traffic, not a wait for a condition
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("idle stream read = %v, want EOF from the agent closing it", err)
	}
	if waited := time.Since(last); waited < 250*time.Millisecond {
		t.Errorf("closed %s after the last traffic, before the 300ms timeout", waited)
	}
	testbin.Eventually(t, 5*time.Second, "stream gone", func() bool { return r.mgr.Status().ActiveStreams == 0 })
	if v := counter(t, r.reg, "pipeops_agent_yamux_stream_errors_total", "type", "copy_error"); v != 0 {
		t.Errorf("idle close counted as copy_error (%v)", v)
	}
}

func TestTargetsOutsideTheAllowListAreRefused(t *testing.T) {
	echo := echoServer(t)
	r := startRig(t, Config{Forwards: map[string]string{"echo": echo}}, nil, devplane.TunnelOptions{})
	_, echoPort, _ := net.SplitHostPort(echo)
	port := 0
	fmt.Sscan(echoPort, &port)
	cases := []struct {
		name   string
		target devplane.TunnelTarget
	}{
		{"an unknown forward name", devplane.TunnelTarget{Service: "ssh"}},
		{"a host address as the service name", devplane.TunnelTarget{Service: "127.0.0.1", Namespace: "default", Port: port}},
		{"a dotted host name", devplane.TunnelTarget{Service: "localhost.localdomain", Namespace: "x", Port: port}},
		{"a Service when no Kubernetes access is wired", devplane.TunnelTarget{Service: "web", Namespace: "default", Port: 80}},
		{"port zero", devplane.TunnelTarget{Service: "web", Namespace: "default"}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := r.open(t, tc.target)
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			n, err := c.Read(make([]byte, 16))
			if n != 0 || err == nil || errors.Is(err, context.DeadlineExceeded) || strings.Contains(fmt.Sprint(err), "timeout") {
				t.Fatalf("read = %d, %v; want the stream closed at once", n, err)
			}
			testbin.Eventually(t, 5*time.Second, "dial_error counted", func() bool {
				return counter(t, r.reg, "pipeops_agent_yamux_stream_errors_total", "type", "dial_error") == float64(i+1)
			})
		})
	}
}

func TestABadHeaderResetsTheStreamAndIsCounted(t *testing.T) {
	r := startRig(t, Config{HeaderTimeout: 2 * time.Second}, nil, devplane.TunnelOptions{})
	cases := []struct {
		name string
		raw  []byte
	}{
		{"a truncated fixed part", []byte{1, 1, 0}},
		{"a name longer than its bound", []byte{1, 1, 0, 80, 0xff, 0xff}},
		{"a name that is not UTF-8", []byte{1, 1, 0, 80, 0, 2, 0xff, 0xfe, 0, 0, 0, 0}},
		{"a missing tunnel id length", []byte{1, 1, 0, 80, 0, 1, 'a', 0, 1, 'b'}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := r.plane.OpenRawTunnelStream(ctx, "", tc.raw)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.Read(make([]byte, 1)); err == nil {
				t.Fatal("read succeeded on a stream with a bad header")
			}
			testbin.Eventually(t, 5*time.Second, "header_error counted", func() bool {
				return counter(t, r.reg, "pipeops_agent_yamux_stream_errors_total", "type", "header_error") == float64(i+1)
			})
		})
	}
	// The session survives bad headers.
	if !r.mgr.Status().Active {
		t.Fatal("tunnel inactive after bad headers")
	}
}

func TestStreamsBeyondTheCapAreResetWhileTheOthersWork(t *testing.T) {
	echo := echoServer(t)
	r := startRig(t, Config{Forwards: map[string]string{"echo": echo}, MaxStreams: 3}, nil, devplane.TunnelOptions{})
	var open []net.Conn
	for i := 0; i < 3; i++ {
		c := r.open(t, devplane.TunnelTarget{Service: "echo"})
		if _, err := c.Write([]byte("ok")); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(c, make([]byte, 2)); err != nil {
			t.Fatalf("stream %d within the cap: %v", i, err)
		}
		open = append(open, c)
	}
	// The agent resets a fourth stream: the reset shows either when the
	// gateway writes the stream header or on the first read.
	if over, err := r.tryOpen(t, devplane.TunnelTarget{Service: "echo"}); err == nil {
		_ = over.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := over.Read(make([]byte, 1)); err == nil || strings.Contains(err.Error(), "deadline") {
			t.Fatalf("a fourth stream was not reset: %v", err)
		}
	} else if !strings.Contains(err.Error(), "reset") {
		t.Fatalf("opening a fourth stream failed with %v; want a reset", err)
	}
	_ = open[0].Close()
	testbin.Eventually(t, 10*time.Second, "a slot frees up when a stream ends", func() bool {
		c, err := r.tryOpen(t, devplane.TunnelTarget{Service: "echo"})
		if err != nil {
			return false
		}
		if _, err := c.Write([]byte("ok")); err != nil {
			return false
		}
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, err = io.ReadFull(c, make([]byte, 2))
		return err == nil
	})
}

func TestServiceForwardsComeAndGoButConfiguredOnesStay(t *testing.T) {
	m := New(Config{Forwards: map[string]string{"grafana": "127.0.0.1:3000"}}, nil, nil, nil)
	m.SetServiceForward("prometheus", "pipeops-monitoring", "kube-prometheus-stack-prometheus", 9090)
	m.SetServiceForward("grafana", "pipeops-monitoring", "kube-prometheus-stack-grafana", 3000)
	want := []apitype.Forward{{Name: "grafana", LocalAddr: "127.0.0.1:3000"},
		{Name: "prometheus", LocalAddr: "kube-prometheus-stack-prometheus.pipeops-monitoring:9090"}}
	if got := m.Forwards(); !slices.Equal(got, want) {
		t.Fatalf("forwards = %v; want %v (the configured grafana wins)", got, want)
	}
	m.RemoveServiceForward("prometheus")
	m.RemoveServiceForward("grafana")
	if got := m.Forwards(); !slices.Equal(got, want[:1]) {
		t.Errorf("forwards after removal = %v; want only the configured grafana", got)
	}
	var disabled *Manager
	disabled.RemoveServiceForward("loki") // a disabled tunnel ignores it
}
