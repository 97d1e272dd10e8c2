package kubeproxy

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
)

// responder answers one request in its response mode (§6.5).
type responder struct {
	p         *Proxy
	c         protocol.Conn
	id        string
	streaming bool
	ctx       context.Context
	deadline  time.Duration
	what      string
	sent      bool // a proxy_response_header went out
	// received is when the proxy_request was read; backend is the wait for
	// the backend's response headers. Their difference to the last send is
	// the agent's own time (pipeops_agent_proxy_agent_seconds).
	received time.Time
	backend  time.Duration
}

// answered records the agent's own time on a request answered in full.
func (o *responder) answered() {
	if !o.received.IsZero() {
		o.p.m.own.Observe((o.p.o.Now().Sub(o.received) - o.backend).Seconds())
	}
}

// fail reports err unless the control plane cancelled the call or the
// connection is gone (§6.6: then nothing more is sent).
func (o *responder) fail(err error) {
	if errorsIsQuiet(o.c, o.ctx) {
		o.p.m.finished("cancelled", 0)
		return
	}
	if cause := context.Cause(o.ctx); errors.Is(cause, errDeadline) || errors.Is(err, errDeadline) {
		err = fmt.Errorf("request to %s exceeded its deadline of %s; send a larger timeout or deadline, or use watch=true for long-lived calls", orBackend(o.what), o.deadline.Round(time.Millisecond))
	} else if cause != nil && !errors.Is(cause, errShutdown) && !errors.Is(err, cause) && errors.Is(err, context.Canceled) {
		err = cause // e.g. a stalled request body
	}
	o.p.m.finished("error", 0)
	sendFailure(o.c, o.id, o.streaming, err.Error())
}

func orBackend(what string) string {
	if what == "" {
		return "the backend"
	}
	return what
}

// buffer reads the whole body into raw, up to MaxBufferedBytes, and sends
// one proxy_response. Every byte it holds (the body, its gzip copy, the
// encoded message) is reserved from the proxy's memory budget before it is
// allocated; past the first reservation (taken before the call) nothing
// waits for the budget, so requests never wait for each other while holding
// part of it. The body is base64-encoded straight into the message, with no
// intermediate string.
func (o *responder) buffer(resp *http.Response, raw *spool) {
	limit, budget := o.p.o.MaxBufferedBytes, o.p.budget
	if resp.ContentLength > limit {
		o.fail(o.tooLarge(limit))
		return
	}
	body, enc, n, err := o.read(resp, raw)
	if body != raw {
		defer body.free()
		raw.free() // the body was read to its end: the compressed copy is all that is left
	}
	if err != nil {
		o.failBuffer(err, n)
		return
	}
	pl := &bufferedPayload{status: resp.StatusCode, headers: responseHeaders(resp.Header, resp.StatusCode), body: body, enc: enc}
	msg := int64(pl.PayloadSize() + protocol.EnvelopeOverhead + 2*len(o.id) + 64)
	if !budget.reserve(msg) {
		o.failBuffer(errOverBudget, n)
		return
	}
	err = o.c.Send(o.ctx, protocol.TypeProxyResponse, o.id, pl)
	budget.release(msg)
	if err != nil {
		o.fail(err)
		return
	}
	o.answered()
	o.p.m.bytesOut(int(n))
	o.p.m.finished(statusClass(resp.StatusCode), 0)
}

// gzipState is what one gzip writer holds while it compresses (about
// 1.2 MB at BestSpeed); it is reserved from the budget for that time.
const gzipState = 5 << 18

// read reads the body into raw, or, for a body of at least gzipMin bytes
// with a textual Content-Type (§4.3's gzip rule), compresses it as it
// arrives into a second spool, so only the compressed copy grows. It
// returns the spool to send, its encoding and the body's length.
func (o *responder) read(resp *http.Response, raw *spool) (*spool, string, int64, error) {
	if compressible(resp.Header.Get("Content-Type")) {
		err := raw.readAtLeast(resp.Body, gzipMin)
		if err != nil { // a short body (io.EOF), or a failure
			return raw, "base64", raw.n, ignoreEOF(err)
		}
		if o.p.budget.reserve(gzipState) {
			gz, n, err := o.compress(resp.Body, raw)
			o.p.budget.release(gzipState)
			return gz, "gzip", n, err
		}
		// No room to compress: send it as it is, if that fits.
	}
	err := raw.reserve(roundUp(resp.ContentLength, blockSize))
	if err == nil {
		err = raw.readFrom(resp.Body)
	}
	return raw, "base64", raw.n, err
}

func ignoreEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

// compress gzips what raw holds and the rest of r into a new spool,
// reading r through raw's first block.
func (o *responder) compress(r io.Reader, raw *spool) (*spool, int64, error) {
	gz := newSpool(o.p.budget, 0)
	zw := gzipWriters.Get().(*gzip.Writer)
	defer gzipWriters.Put(zw)
	zw.Reset(gz)
	n := raw.n
	if err := raw.writeTo(zw); err != nil {
		return gz, n, err
	}
	buf := raw.scratch()
	for {
		k, rerr := r.Read(buf)
		if k > 0 {
			if n += int64(k); n > o.p.o.MaxBufferedBytes {
				return gz, n, errTooLarge
			}
			if _, err := zw.Write(buf[:k]); err != nil {
				return gz, n, err
			}
		}
		if errors.Is(rerr, io.EOF) {
			break
		}
		if rerr != nil {
			return gz, n, rerr
		}
	}
	return gz, n, zw.Close()
}

func roundUp(n, to int64) int64 {
	if n <= 0 {
		return 0
	}
	return (n + to - 1) / to * to
}

func (o *responder) tooLarge(limit int64) error {
	return fmt.Errorf("response from %s is larger than proxy.max_buffered_bytes (%d bytes); send the request with supports_response_streaming:true, or raise proxy.max_buffered_bytes", orBackend(o.what), limit)
}

// failBuffer explains a failed buffering.
func (o *responder) failBuffer(err error, read int64) {
	switch {
	case errors.Is(err, errTooLarge):
		err = o.tooLarge(o.p.o.MaxBufferedBytes)
	case errors.Is(err, errOverBudget):
		err = fmt.Errorf("response from %s does not fit in the agent's memory budget for buffered responses (proxy.memory_budget_bytes = %d bytes, %d in use by other requests); retry later, send the request with supports_response_streaming:true, or raise proxy.memory_budget_bytes",
			orBackend(o.what), o.p.budget.limit, o.p.budget.used.Load())
	default:
		err = fmt.Errorf("read response from %s after %d bytes: %w", orBackend(o.what), read, err)
	}
	o.fail(err)
}

// bufferedPayload is a proxy_response (§4.3) that encodes its body straight
// into the envelope (protocol.PayloadAppender), in the field order of
// protocol.ProxyResponse.
type bufferedPayload struct {
	status  int
	headers map[string][]string
	body    *spool
	enc     string
}

var _ protocol.PayloadAppender = (*bufferedPayload)(nil)

func (b *bufferedPayload) PayloadSize() int {
	return 64 + protocol.HeadersSize(b.headers) + b.body.base64Len() + len(b.enc)
}

func (b *bufferedPayload) AppendPayload(dst []byte) []byte {
	dst = strconv.AppendInt(append(dst, `{"status":`...), int64(b.status), 10)
	dst = protocol.AppendHeaders(append(dst, `,"headers":`...), b.headers)
	if b.body.n > 0 {
		dst = b.body.appendBase64(append(dst, `,"body":"`...))
		dst = append(append(append(dst, `","encoding":"`...), b.enc...), '"')
	}
	return append(dst, '}')
}

// chunkPayload is a proxy_response_chunk payload (§4.3) encoded straight
// into the envelope: no intermediate string, struct or JSON copy (at 32 KiB
// per chunk those copies are most of the garbage a large stream makes).
type chunkPayload []byte

var _ protocol.PayloadAppender = chunkPayload(nil)

func (c chunkPayload) PayloadSize() int { return base64.StdEncoding.EncodedLen(len(c)) + 64 }

func (c chunkPayload) AppendPayload(b []byte) []byte {
	b = append(b, `{"data":"`...)
	n, k := len(b), base64.StdEncoding.EncodedLen(len(c))
	b = slices.Grow(b, k)[:n+k]
	base64.StdEncoding.Encode(b[n:], c)
	b = append(b, `","encoding":"base64","size":`...)
	b = strconv.AppendInt(b, int64(len(c)), 10)
	return append(b, '}')
}

// headerPayload is a proxy_response_header payload (§4.3), the bytes
// encoding/json writes for protocol.ProxyResponseHeader.
type headerPayload struct {
	status  int
	headers map[string][]string
}

var _ protocol.PayloadAppender = headerPayload{}

func (h headerPayload) PayloadSize() int { return 32 + protocol.HeadersSize(h.headers) }

func (h headerPayload) AppendPayload(b []byte) []byte {
	b = strconv.AppendInt(append(b, `{"status":`...), int64(h.status), 10)
	return append(protocol.AppendHeaders(append(b, `,"headers":`...), h.headers), '}')
}

var chunkBufs = sync.Pool{New: func() any { b := make([]byte, protocol.MaxChunk); return &b }}

// stream sends the header, one chunk per backend read (at most 32 KiB),
// then the end. Sends block while the connection is busy, so a slow control
// plane slows the backend read instead of growing memory. A body of known
// length that fits one chunk is read first and its three messages go out
// together (streamBatch).
func (o *responder) stream(resp *http.Response) {
	hdr := headerPayload{status: resp.StatusCode, headers: responseHeaders(resp.Header, resp.StatusCode)}
	bp := chunkBufs.Get().(*[]byte)
	defer chunkBufs.Put(bp)
	buf := *bp
	if bs, ok := o.c.(protocol.BatchSender); ok && resp.ContentLength >= 0 && resp.ContentLength <= int64(len(buf)) {
		o.streamSmall(bs, resp, hdr, buf)
		return
	}
	if err := o.c.Send(o.ctx, protocol.TypeProxyResponseHeader, o.id, hdr); err != nil {
		o.fail(err)
		return
	}
	o.sent = true
	var total int
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			if o.ctx.Err() != nil {
				o.fail(context.Cause(o.ctx))
				return
			}
			if err := o.c.Send(o.ctx, protocol.TypeProxyResponseChunk, o.id, chunkPayload(buf[:n])); err != nil {
				o.fail(err)
				return
			}
			total += n
			o.p.m.bytesOut(n)
		}
		if errors.Is(rerr, io.EOF) {
			break
		}
		if rerr != nil {
			o.fail(fmt.Errorf("read response from %s after %d bytes: %w", orBackend(o.what), total, rerr))
			return
		}
	}
	if err := o.c.Send(o.ctx, protocol.TypeProxyResponseEnd, o.id, struct{}{}); err != nil {
		o.fail(err)
		return
	}
	o.answered()
	o.p.m.finished(statusClass(resp.StatusCode), 0)
}

// streamSmall answers a body whose Content-Length fits one chunk: it reads
// the body, then queues the header, the chunk (none for an empty body) and
// the end as one batch, the same messages in the same order as stream
// sends, in one hand-off to the writer instead of three. A body that is
// shorter or longer than announced fails as stream's read would.
func (o *responder) streamSmall(bs protocol.BatchSender, resp *http.Response, hdr headerPayload, buf []byte) {
	n, err := io.ReadFull(resp.Body, buf[:resp.ContentLength])
	if err == nil {
		var one [1]byte
		k, rerr := resp.Body.Read(one[:])
		switch {
		case k > 0:
			err = fmt.Errorf("the body is longer than its Content-Length of %d bytes", resp.ContentLength)
		case rerr != nil && !errors.Is(rerr, io.EOF):
			err = rerr
		}
	}
	if err != nil { // proxy_response_abort instead of the header (§4.3)
		if o.ctx.Err() != nil {
			err = context.Cause(o.ctx)
		} else {
			err = fmt.Errorf("read response from %s after %d bytes: %w", orBackend(o.what), n, err)
		}
		o.fail(err)
		return
	}
	msgs := make([]protocol.Message, 0, 3)
	msgs = append(msgs, protocol.Message{Type: protocol.TypeProxyResponseHeader, RequestID: o.id, Payload: hdr})
	if n > 0 {
		msgs = append(msgs, protocol.Message{Type: protocol.TypeProxyResponseChunk, RequestID: o.id, Payload: chunkPayload(buf[:n])})
	}
	msgs = append(msgs, protocol.Message{Type: protocol.TypeProxyResponseEnd, RequestID: o.id, Payload: struct{}{}})
	if err := bs.SendBatch(o.ctx, msgs...); err != nil {
		o.fail(err)
		return
	}
	o.sent = true
	o.p.m.bytesOut(n)
	o.answered()
	o.p.m.finished(statusClass(resp.StatusCode), 0)
}

// hopByHopResponse are removed from proxied responses (§6.4); on a 101
// Upgrade and Connection stay.
var hopByHopResponse = map[string]bool{
	"Connection": true, "Transfer-Encoding": true, "Keep-Alive": true, "Proxy-Authenticate": true,
	"Proxy-Authorization": true, "Te": true, "Trailers": true, "Trailer": true, "Upgrade": true,
}

func responseHeaders(h http.Header, status int) map[string][]string {
	out := make(map[string][]string, len(h))
	for k, v := range h {
		if hopByHopResponse[k] && (status != http.StatusSwitchingProtocols || (k != "Upgrade" && k != "Connection")) {
			continue
		}
		out[k] = v
	}
	return out
}

// compressibleTypes and incompressible implement the gzip rule of §4.3.
var (
	compressibleTypes = []string{"text/", "json", "javascript", "xml", "html", "yaml"}
	incompressible    = []string{"gzip", "zip", "image", "video", "audio"}
)

// gzipMin is the smallest body the gzip rule compresses.
const gzipMin = 1 << 10

func compressible(ct string) bool {
	ct = strings.ToLower(ct)
	for _, s := range incompressible {
		if strings.Contains(ct, s) {
			return false
		}
	}
	for _, s := range compressibleTypes {
		if strings.Contains(ct, s) {
			return true
		}
	}
	return false
}

var gzipWriters = sync.Pool{New: func() any { w, _ := gzip.NewWriterLevel(io.Discard, gzip.BestSpeed); return w }}

// encodeBody applies §4.3: gzip (then base64) for bodies of at least 1 KiB
// with a textual Content-Type, base64 otherwise; nothing for an empty body.
func encodeBody(contentType string, body []byte) (string, string) {
	if len(body) == 0 {
		return "", ""
	}
	if len(body) >= gzipMin && compressible(contentType) {
		var buf bytes.Buffer
		zw := gzipWriters.Get().(*gzip.Writer)
		zw.Reset(&buf)
		_, err := zw.Write(body)
		if err == nil {
			err = zw.Close()
		}
		gzipWriters.Put(zw)
		if err == nil {
			return base64.StdEncoding.EncodeToString(buf.Bytes()), "gzip"
		}
	}
	return base64.StdEncoding.EncodeToString(body), "base64"
}

func statusClass(code int) string {
	if code < 100 || code > 599 {
		return "other"
	}
	return fmt.Sprintf("%dxx", code/100)
}
