package testbin

import (
	"bytes"
	"compress/flate"
	"crypto/sha1" //nolint:gosec // RFC 6455 mandates SHA-1 for the accept key
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// DeflateBomb is a hostile WebSocket backend: it answers every handshake
// with permessage-deflate, whether or not the client offered it, then sends
// one compressed binary message of about 250 KiB that inflates to
// InflatedSize bytes, and reads until the client closes. Offered receives
// the Sec-WebSocket-Extensions header of each handshake ("" when the client
// offered none).
type DeflateBomb struct {
	Offered chan string
	payload []byte
}

// InflatedSize is what the bomb's one message inflates to.
const InflatedSize = 256 << 20

// NewDeflateBomb prepares the compressed message.
func NewDeflateBomb() *DeflateBomb {
	var buf bytes.Buffer
	fw, _ := flate.NewWriter(&buf, flate.BestCompression) // the level is valid
	zeros := make([]byte, 1<<20)
	for i := 0; i < InflatedSize>>20; i++ {
		_, _ = fw.Write(zeros)
	}
	_ = fw.Flush()
	// RFC 7692 §7.2.1: the sender drops the flush's trailing 00 00 ff ff.
	return &DeflateBomb{Offered: make(chan string, 16), payload: bytes.TrimSuffix(buf.Bytes(), []byte{0, 0, 0xff, 0xff})}
}

// ServeHTTP implements http.Handler.
func (b *DeflateBomb) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	select {
	case b.Offered <- r.Header.Get("Sec-WebSocket-Extensions"):
	default:
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		http.Error(w, "cannot hijack", http.StatusInternalServerError)
		return
	}
	conn, brw, err := hj.Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n"+
		"Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n\r\n",
		AcceptKey(r.Header.Get("Sec-WebSocket-Key")))
	// One final binary frame with RSV1 (compressed), unmasked, 64-bit length.
	hdr := []byte{0x80 | 0x40 | 0x2, 127}
	for i := 7; i >= 0; i-- {
		hdr = append(hdr, byte(uint64(len(b.payload))>>(8*i)))
	}
	_, _ = brw.Write(hdr)
	_, _ = brw.Write(b.payload)
	_ = brw.Flush()
	_, _ = io.Copy(io.Discard, brw)
}

// Serve serves the bomb on ln until ln is closed.
func (b *DeflateBomb) Serve(ln net.Listener) error {
	return (&http.Server{Handler: b, ReadHeaderTimeout: 10 * time.Second}).Serve(ln)
}

// AcceptKey is the Sec-WebSocket-Accept answer to a Sec-WebSocket-Key.
func AcceptKey(key string) string {
	h := sha1.New() //nolint:gosec // protocol-mandated
	_, _ = io.WriteString(h, key+"258EAFA5-E914-47DA-95CA-C5AB0DC85B11")
	return base64.StdEncoding.EncodeToString(h.Sum(nil))
}
