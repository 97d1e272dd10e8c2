package tunnel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"

	yamux "github.com/libp2p/go-yamux/v5"
)

// maxDatagram is the largest UDP payload carried.
const maxDatagram = 65535

// relayUDP carries datagrams between the stream and a connected UDP socket.
//
// Unframed (the reference's wire contract, §7.3): each read from the stream
// is sent as one datagram and each datagram received becomes one write, so
// coalesced or split reads merge or split datagrams. Framed (negotiated
// through gateway_hello.udp_framing, docs/tunnel.md): every datagram is a
// 2-byte big-endian length and that many bytes, in both directions.
//
// The session ends when the gateway closes the stream, on an error, or after
// the inactivity timeout.
func (m *Manager) relayUDP(st *yamux.Stream, udp net.Conn, framed bool) error {
	var closing atomic.Bool
	stop := func() {
		closing.Store(true)
		_ = st.Close()
		_ = udp.Close()
	}
	idle := startIdle(m.cfg.InactivityTimeout, stop)
	defer idle.stop()

	var wg sync.WaitGroup
	var once sync.Once
	var firstErr error
	fail := func(err error) {
		if !closing.Load() {
			once.Do(func() { firstErr = err })
		}
		stop()
	}
	wg.Add(2)
	go func() { // gateway → service
		defer wg.Done()
		err := udpFromStream(st, udp, framed, func(n int) { idle.touch(); m.m.in(n) })
		if err != nil {
			fail(fmt.Errorf("gateway to udp: %w", err))
			return
		}
		stop() // the gateway ended the UDP session
	}()
	go func() { // service → gateway
		defer wg.Done()
		if err := udpToStream(st, udp, framed, func(n int) { idle.touch(); m.m.out(n) }); err != nil {
			fail(fmt.Errorf("udp to gateway: %w", err))
		}
	}()
	wg.Wait()
	return firstErr
}

func udpFromStream(st io.Reader, udp net.Conn, framed bool, count func(int)) error {
	buf := make([]byte, maxDatagram)
	for {
		var n int
		var err error
		if framed {
			var l [2]byte
			if _, err = io.ReadFull(st, l[:]); err != nil {
				if err == io.EOF {
					return nil
				}
				return err
			}
			n = int(binary.BigEndian.Uint16(l[:]))
			if _, err = io.ReadFull(st, buf[:n]); err != nil {
				return fmt.Errorf("truncated datagram: %w", err)
			}
		} else {
			n, err = st.Read(buf)
			if err != nil && n == 0 {
				if err == io.EOF {
					return nil
				}
				return err
			}
		}
		if _, werr := udp.Write(buf[:n]); werr != nil && !errors.Is(werr, syscall.ECONNREFUSED) {
			return werr
		}
		count(n)
		if err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
	}
}

func udpToStream(st io.Writer, udp net.Conn, framed bool, count func(int)) error {
	buf := make([]byte, 2+maxDatagram)
	for {
		n, err := udp.Read(buf[2:])
		if err != nil {
			// A connected UDP socket reports an earlier ICMP port-unreachable
			// as ECONNREFUSED; the session goes on.
			if errors.Is(err, syscall.ECONNREFUSED) {
				continue
			}
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		out := buf[2 : 2+n]
		if framed {
			binary.BigEndian.PutUint16(buf[:2], uint16(n))
			out = buf[:2+n]
		}
		if _, err := st.Write(out); err != nil {
			return err
		}
		count(n)
	}
}
