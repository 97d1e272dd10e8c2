package main

import (
	"context"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/devplane"
)

func init() { benches["tunnel"] = runTunnelBench }

// runTunnelBench measures the yamux tunnel against raw loopback TCP in the
// same run and prints ratios (issue 6). Nothing is asserted. The agent runs
// as a subprocess (tunnel-agent) so its CPU and RSS are its own; the gateway
// (devplane, hashicorp/yamux), the load and the targets run in this process.
func runTunnelBench(args []string) error {
	fs := flag.NewFlagSet("tunnel", flag.ContinueOnError)
	d := fs.Duration("d", 3*time.Second, "duration of each throughput measurement")
	rtt := fs.Duration("rtt", 50*time.Millisecond, "round-trip time of the emulated WAN path")
	bwList := fs.String("bw-mbit", "400,1000", "bandwidths of the emulated WAN path, Mbit/s (comma-separated)")
	nOpen := fs.Int("open-streams", 1000, "streams held open for the RSS measurement")
	only := fs.String("only", "raw,ws,wss,wan", "parts to run (comma-separated: raw,ws,wss,wan)")
	windows := fs.String("wan-windows", "8388608,262144", "stream windows (bytes) measured over the WAN path")
	if err := fs.Parse(args); err != nil {
		return err
	}
	tg, err := startTargets()
	if err != nil {
		return err
	}
	defer tg.close()
	stall, err := startStall()
	if err != nil {
		return err
	}
	defer stall.Close()
	b := &tunnelBench{tg: tg, fwd: tg.forwards(), d: *d, nOpen: *nOpen}
	b.fwd["stall"] = stall.Addr().String()
	fmt.Printf("tunnel bench: %d CPUs, %s per measurement; agent = separate process; gateway = devplane (hashicorp/yamux) in this process\n\n", runtime.NumCPU(), *d)
	parts := map[string]bool{}
	for _, p := range strings.Split(*only, ",") {
		parts[strings.TrimSpace(p)] = true
	}
	steps := []struct {
		name string
		run  func() error
	}{
		{"raw", b.raw},
		{"ws", b.ws},
		{"wss", b.wss},
		{"wan", func() error {
			for _, bs := range strings.Split(*bwList, ",") {
				bw, err := strconv.ParseFloat(strings.TrimSpace(bs), 64)
				if err != nil {
					return fmt.Errorf("-bw-mbit: %w", err)
				}
				if err := b.wan(*rtt, bw, *windows); err != nil {
					return err
				}
			}
			return nil
		}},
	}
	for _, st := range steps {
		if parts[st.name] {
			if err := st.run(); err != nil {
				return fmt.Errorf("%s: %w", st.name, err)
			}
			fmt.Println()
		}
	}
	return nil
}

const gb = 1e9

type tunnelBench struct {
	tg                    *targets
	fwd                   map[string]string
	d                     time.Duration
	nOpen                 int
	rawUp, rawDown, raw16 float64
}

func dialer(addr string) func() (net.Conn, error) {
	return func() (net.Conn, error) { return net.Dial("tcp", addr) }
}

// raw measures loopback TCP without the tunnel.
func (b *tunnelBench) raw() error {
	s0 := selfCPU()
	up, n, err := measure(b.tg, dialer(b.tg.sink.Addr().String()), 1, b.d, true)
	if err != nil {
		return err
	}
	cpu := (selfCPU() - s0) / (float64(n) / gb)
	b.rawUp = up
	b.rawDown, _, _ = measure(b.tg, dialer(b.tg.source.Addr().String()), 1, b.d, false)
	b.raw16, _, _ = measure(b.tg, dialer(b.tg.sink.Addr().String()), 16, b.d, true)
	row("raw TCP, 1 stream, up", b.rawUp, 0)
	row("raw TCP, 1 stream, down", b.rawDown, 0)
	row("raw TCP, 16 streams, up", b.raw16, 0)
	fmt.Printf("  raw TCP CPU: %.2f CPU-s/GB (sender + receiver)\n", cpu)
	return nil
}

// ws measures ws:// on loopback: throughput, CPU, 16 streams, RSS.
func (b *tunnelBench) ws() error {
	g, err := startGateway(false, 8<<20)
	if err != nil {
		return err
	}
	defer g.close()
	a, err := startAgent(g.url, "", 8<<20, b.fwd)
	if err != nil {
		return err
	}
	defer a.stop()
	if err := g.waitTunnel(); err != nil {
		return err
	}
	idleRSS := a.rssMiB()
	for _, dir := range []struct {
		name, target string
		up           bool
		raw          float64
	}{{"ws:// 1 stream, up (gateway→agent→target)", "sink", true, b.rawUp}, {"ws:// 1 stream, down (target→agent→gateway)", "source", false, b.rawDown}} {
		a0, s0 := a.cpuSeconds(), selfCPU()
		bps, n, err := measure(b.tg, g.open(dir.target), 1, b.d, dir.up)
		if err != nil {
			return err
		}
		row(dir.name, bps, dir.raw)
		ga := float64(n) / gb
		fmt.Printf("  CPU: agent %.2f CPU-s/GB; agent + gateway + load + targets %.2f CPU-s/GB\n", (a.cpuSeconds()-a0)/ga, (a.cpuSeconds()-a0+selfCPU()-s0)/ga)
	}
	bps16, _, _ := measure(b.tg, g.open("sink"), 16, b.d, true)
	row("ws:// 16 streams, up, aggregate", bps16, b.raw16)
	closeAll, err := openMany(g, b.nOpen)
	if err != nil {
		return err
	}
	fmt.Printf("%-52s agent %.0f MiB idle → %.0f MiB with %d open streams\n", "ws:// RSS", idleRSS, a.rssMiB(), b.nOpen)
	closeAll()
	stalled := stallLoad(g, a, 64, b.d)
	fmt.Printf("%-52s agent %.0f MiB with 64 streams uploading into targets that never read (budget 128 MiB)\n", "ws:// RSS, memory budget", stalled)
	return nil
}

// wss measures wss:// on loopback.
func (b *tunnelBench) wss() error {
	g, err := startGateway(true, 8<<20)
	if err != nil {
		return err
	}
	defer g.close()
	a, err := startAgent(g.url, g.caFile, 8<<20, b.fwd)
	if err != nil {
		return err
	}
	defer a.stop()
	if err := g.waitTunnel(); err != nil {
		return err
	}
	up, _, _ := measure(b.tg, g.open("sink"), 1, b.d, true)
	row("wss:// 1 stream, up", up, b.rawUp)
	down, _, _ := measure(b.tg, g.open("source"), 1, b.d, false)
	row("wss:// 1 stream, down", down, b.rawDown)
	return nil
}

// wan measures raw TCP and the tunnel over the emulated WAN path.
func (b *tunnelBench) wan(rtt time.Duration, bwMbit float64, windows string) error {
	bw := bwMbit * 1e6 / 8
	fmt.Printf("emulated WAN: RTT %s, %.0f Mbit/s (BDP %.1f MB), in-flight cap %d MiB (tcp_rmem max)\n",
		rtt, bwMbit, bw*rtt.Seconds()/1e6, tcpRmemMax()>>20)
	rawPath, err := newWANPath(b.tg.sink.Addr().String(), rtt, bw)
	if err != nil {
		return err
	}
	wanD := b.d + 2*time.Second // slow start and window growth
	rawWAN, _, _ := measure(b.tg, dialer(rawPath.addr()), 1, wanD, true)
	rawPath.close()
	row("raw TCP over the path, 1 stream, up", rawWAN, 0)
	results := map[int]float64{}
	for _, ws := range strings.Split(windows, ",") {
		w, err := strconv.Atoi(strings.TrimSpace(ws))
		if err != nil {
			return fmt.Errorf("-wan-windows: %w", err)
		}
		g, err := startGateway(false, w)
		if err != nil {
			return err
		}
		path, err := newWANPath(g.addr, rtt, bw)
		if err != nil {
			return err
		}
		a, err := startAgent("http://"+path.addr(), "", w, b.fwd)
		if err != nil {
			return err
		}
		if err := g.waitTunnel(); err == nil {
			up, _, _ := measure(b.tg, g.open("sink"), 1, wanD, true)
			row(fmt.Sprintf("tunnel over the path, %d KiB window, up", w>>10), up, rawWAN)
			down, _, _ := measure(b.tg, g.open("source"), 1, wanD, false)
			row(fmt.Sprintf("tunnel over the path, %d KiB window, down", w>>10), down, rawWAN)
			results[w] = up
		}
		a.stop()
		path.close()
		g.close()
	}
	if wide, narrow := results[8<<20], results[256<<10]; wide > 0 && narrow > 0 {
		fmt.Printf("  up: 8 MiB window / 256 KiB window = %.1f×\n", wide/narrow)
	}
	fmt.Println("  (a yamux window sends a window update every half window: matching raw TCP needs a window ≥ 2 × BDP)")
	return nil
}

func row(name string, bps, raw float64) {
	if raw > 0 {
		fmt.Printf("%-52s %8.1f MB/s  %.3f× raw\n", name, bps/1e6, bps/raw)
		return
	}
	fmt.Printf("%-52s %8.1f MB/s\n", name, bps/1e6)
}

func selfCPU() float64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

// gateway is an in-process devplane on loopback.
type gateway struct {
	srv    *httptest.Server
	plane  *devplane.Server
	url    string
	addr   string
	caFile string
}

func startGateway(tls bool, window int) (*gateway, error) {
	p := devplane.New(devplane.Config{Tokens: []string{benchToken}})
	p.SetTunnelOptions(devplane.TunnelOptions{Window: window})
	g := &gateway{plane: p, srv: httptest.NewUnstartedServer(p.Handler())}
	if tls {
		g.srv.StartTLS()
		dir, err := os.MkdirTemp("", "tunnel-bench")
		if err != nil {
			return nil, err
		}
		g.caFile = filepath.Join(dir, "ca.pem")
		pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: g.srv.Certificate().Raw})
		if err := os.WriteFile(g.caFile, pemBytes, 0o600); err != nil {
			return nil, err
		}
	} else {
		g.srv.Start()
	}
	g.url, g.addr = g.srv.URL, g.srv.Listener.Addr().String()
	return g, nil
}

func (g *gateway) waitTunnel() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return g.plane.WaitTunnel(ctx, "")
}

func (g *gateway) open(name string) func() (net.Conn, error) {
	return func() (net.Conn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return g.plane.OpenTunnelStream(ctx, "", devplane.TunnelTarget{Service: name})
	}
}

func (g *gateway) close() {
	g.plane.DropAll()
	g.srv.Close()
	if g.caFile != "" {
		os.RemoveAll(filepath.Dir(g.caFile))
	}
}

// openMany opens n echo streams, round-trips 1 KiB on each and keeps them
// open; the returned func closes them.
func openMany(g *gateway, n int) (func(), error) {
	conns := make([]net.Conn, 0, n)
	closeAll := func() {
		for _, c := range conns {
			c.Close()
		}
	}
	msg := make([]byte, 1024)
	for i := 0; i < n; i++ {
		c, err := g.open("echo")()
		if err != nil {
			closeAll()
			return nil, err
		}
		conns = append(conns, c)
		if _, err := c.Write(msg); err != nil {
			closeAll()
			return nil, err
		}
	}
	for _, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.ReadFull(c, msg); err != nil {
			closeAll()
			return nil, fmt.Errorf("echo on an open stream: %w", err)
		}
	}
	time.Sleep(time.Second)
	return closeAll, nil
}

// startStall is a target that accepts and never reads.
func startStall() (net.Listener, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	go func() {
		var held []net.Conn
		for {
			c, err := ln.Accept()
			if err != nil {
				for _, c := range held {
					c.Close()
				}
				return
			}
			_ = c.(*net.TCPConn).SetReadBuffer(4 << 10)
			held = append(held, c)
		}
	}()
	return ln, nil
}

// stallLoad pushes n streams into targets that never read, for d, and
// returns the agent's RSS at the end: the budget's bound in action.
func stallLoad(g *gateway, a *agentProc, n int, d time.Duration) float64 {
	conns := make([]net.Conn, 0, n)
	for i := 0; i < n; i++ {
		if c, err := g.open("stall")(); err == nil {
			conns = append(conns, c)
		}
	}
	deadline := time.Now().Add(d)
	done := make(chan struct{})
	for _, c := range conns {
		go func() {
			buf := make([]byte, 256<<10)
			_ = c.SetWriteDeadline(deadline)
			for {
				if _, err := c.Write(buf); err != nil {
					done <- struct{}{}
					return
				}
			}
		}()
	}
	for range conns {
		<-done
	}
	rss := a.rssMiB()
	for _, c := range conns {
		c.Close()
	}
	return rss
}
