package testbin

import (
	"net"
	"sync"
)

// Blackhole is a TCP relay to a target that, once holed, stops moving
// bytes either way without closing anything, like a silent network
// partition; Heal resumes forwarding on the same sockets. The link tests
// and the fault bench put it between the agent and the control plane.
type Blackhole struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	cond   *sync.Cond
	holed  bool
}

// NewBlackhole listens on listen ("127.0.0.1:0" for any port) and relays
// every connection to target until Close.
func NewBlackhole(listen, target string) (*Blackhole, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, err
	}
	r := &Blackhole{ln: ln, target: target}
	r.cond = sync.NewCond(&r.mu)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go r.pipe(c)
		}
	}()
	return r, nil
}

// Addr is the relay's listening address.
func (r *Blackhole) Addr() string { return r.ln.Addr().String() }

// Hole stops forwarding; nothing is closed.
func (r *Blackhole) Hole() { r.mu.Lock(); r.holed = true; r.mu.Unlock() }

// Heal resumes forwarding.
func (r *Blackhole) Heal() {
	r.mu.Lock()
	r.holed = false
	r.cond.Broadcast()
	r.mu.Unlock()
}

// Close stops accepting and heals, so that relayed connections drain.
func (r *Blackhole) Close() {
	r.ln.Close()
	r.Heal()
}

func (r *Blackhole) pipe(c net.Conn) {
	defer c.Close()
	u, err := net.Dial("tcp", r.target)
	if err != nil {
		return
	}
	defer u.Close()
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			r.mu.Lock()
			for r.holed {
				r.cond.Wait()
			}
			r.mu.Unlock()
			if n > 0 {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		dst.Close()
		done <- struct{}{}
	}
	go cp(u, c)
	go cp(c, u)
	<-done
	<-done
}
