package main

import (
	"context"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"
)

// wanPath is a userspace emulated WAN link (this kernel has no netem): a TCP
// proxy whose every direction delays data by rtt/2, serialises it at bw
// bytes/s, and keeps at most window bytes unacknowledged, released rtt/2
// after delivery (the ACK's way back). window emulates TCP's receive window
// on such a path (net.ipv4.tcp_rmem max), so raw TCP and the tunnel's
// WebSocket see the same limits.
type wanPath struct {
	ln     net.Listener
	target string
	rtt    time.Duration
	bw     float64
	window int64
}

func newWANPath(target string, rtt time.Duration, bw float64) (*wanPath, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &wanPath{ln: ln, target: target, rtt: rtt, bw: bw, window: tcpRmemMax()}
	go p.serve()
	return p, nil
}

func (p *wanPath) addr() string { return p.ln.Addr().String() }
func (p *wanPath) close()       { p.ln.Close() }

func tcpRmemMax() int64 {
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_rmem")
	if f := strings.Fields(string(b)); err == nil && len(f) == 3 {
		if v, err := strconv.ParseInt(f[2], 10, 64); err == nil {
			return v
		}
	}
	return 6 << 20
}

func (p *wanPath) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		go func() {
			t, err := net.Dial("tcp", p.target)
			if err != nil {
				c.Close()
				return
			}
			var wg sync.WaitGroup
			wg.Add(2)
			go func() { defer wg.Done(); p.line(t.(*net.TCPConn), c.(*net.TCPConn)) }()
			go func() { defer wg.Done(); p.line(c.(*net.TCPConn), t.(*net.TCPConn)) }()
			wg.Wait()
			c.Close()
			t.Close()
		}()
	}
}

type chunk struct {
	b   []byte
	due time.Time
}

// line carries src to dst with the path's delay, bandwidth and window.
func (p *wanPath) line(dst, src *net.TCPConn) {
	oneWay := p.rtt / 2
	sem := semaphore.NewWeighted(p.window)
	ch := make(chan chunk, 1<<16)
	go func() {
		defer close(ch)
		var txDone time.Time
		for {
			b := make([]byte, 64<<10)
			n, err := src.Read(b)
			if n > 0 {
				_ = sem.Acquire(context.Background(), int64(n))
				now := time.Now()
				if txDone.Before(now) {
					txDone = now
				}
				txDone = txDone.Add(time.Duration(float64(n) / p.bw * float64(time.Second)))
				ch <- chunk{b: b[:n], due: txDone.Add(oneWay)}
			}
			if err != nil {
				return
			}
		}
	}()
	for c := range ch {
		time.Sleep(time.Until(c.due))
		if _, err := dst.Write(c.b); err != nil {
			break
		}
		n := int64(len(c.b))
		time.AfterFunc(oneWay, func() { sem.Release(n) })
	}
	_ = dst.CloseWrite()
	for range ch { // drain so the reader can exit
	}
}

// targets are the "cluster services" behind the agent: a sink that counts
// what it reads, a source that writes forever, and an echo.
type targets struct {
	sink, source, echo net.Listener
	sunk               atomic.Int64
}

func startTargets() (*targets, error) {
	t := &targets{}
	var err error
	for _, l := range []*net.Listener{&t.sink, &t.source, &t.echo} {
		if *l, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			return nil, err
		}
	}
	serve := func(ln net.Listener, fn func(c net.Conn)) {
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() { defer c.Close(); fn(c) }()
			}
		}()
	}
	serve(t.sink, func(c net.Conn) {
		buf := make([]byte, 256<<10)
		for {
			n, err := c.Read(buf)
			t.sunk.Add(int64(n))
			if err != nil {
				return
			}
		}
	})
	serve(t.source, func(c net.Conn) {
		buf := make([]byte, 256<<10)
		for {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	})
	serve(t.echo, func(c net.Conn) { _, _ = io.Copy(c, c) })
	return t, nil
}

func (t *targets) close() {
	t.sink.Close()
	t.source.Close()
	t.echo.Close()
}

func (t *targets) forwards() map[string]string {
	return map[string]string{"sink": t.sink.Addr().String(), "source": t.source.Addr().String(), "echo": t.echo.Addr().String()}
}

// measure runs n streams for d: up writes into each conn (the sink counts),
// down reads from each conn. It returns bytes per second.
func measure(t *targets, open func() (net.Conn, error), n int, d time.Duration, up bool) (float64, int64, error) {
	conns := make([]net.Conn, n)
	for i := range conns {
		c, err := open()
		if err != nil {
			return 0, 0, err
		}
		conns[i] = c
	}
	var got atomic.Int64
	base := t.sunk.Load()
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 256<<10)
			_ = c.SetDeadline(deadline)
			for time.Now().Before(deadline) {
				var n int
				var err error
				if up {
					n, err = c.Write(buf)
				} else {
					n, err = c.Read(buf)
					got.Add(int64(n))
				}
				if err != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	total := got.Load()
	if up {
		total = t.sunk.Load() - base // what arrived by the deadline
	}
	for _, c := range conns {
		c.Close()
	}
	return float64(total) / elapsed.Seconds(), total, nil
}
