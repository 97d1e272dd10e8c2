package testbin

import (
	"net"
	"testing"
)

// ServeTCP listens on addr ("127.0.0.1:0" for any port) and hands every
// accepted connection to handle in its own goroutine until the test ends.
func ServeTCP(t testing.TB, addr string, handle func(net.Conn)) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go handle(c)
		}
	}()
	return ln
}
