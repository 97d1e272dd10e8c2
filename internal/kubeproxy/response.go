package kubeproxy

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/controlplane"
	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
)

// responder answers one request in its response mode (§6.5).
type responder struct {
	p         *Proxy
	c         controlplane.Conn
	id        string
	streaming bool
	ctx       context.Context
	deadline  time.Duration
	what      string
	sent      bool // a proxy_response_header went out
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

// buffer reads the whole body, up to MaxBufferedBytes, and sends one
// proxy_response.
func (o *responder) buffer(resp *http.Response) {
	limit := o.p.o.MaxBufferedBytes
	var buf bytes.Buffer
	if resp.ContentLength > 0 && resp.ContentLength <= limit {
		buf.Grow(int(resp.ContentLength))
	}
	n, err := io.Copy(&buf, io.LimitReader(resp.Body, limit+1))
	if err != nil {
		o.fail(fmt.Errorf("read response from %s: %w", orBackend(o.what), err))
		return
	}
	if n > limit {
		o.fail(fmt.Errorf("response from %s is larger than proxy.max_buffered_bytes (%d bytes); send the request with supports_response_streaming:true, or raise proxy.max_buffered_bytes", orBackend(o.what), limit))
		return
	}
	body, enc := encodeBody(resp.Header.Get("Content-Type"), buf.Bytes())
	err = o.c.Send(o.ctx, protocol.TypeProxyResponse, o.id, protocol.ProxyResponse{
		Status: resp.StatusCode, Headers: responseHeaders(resp.Header, resp.StatusCode), Body: body, Encoding: enc,
	})
	if err != nil {
		o.fail(err)
		return
	}
	o.p.m.bytesOut(int(n))
	o.p.m.finished(statusClass(resp.StatusCode), 0)
}

// appendChunkPayload renders a proxy_response_chunk payload straight into
// b (no intermediate string and struct encoding: at 32 KiB per chunk those
// copies are most of the garbage a large stream makes). The envelope
// encoder copies the payload, so b is reusable as soon as Send returns.
func appendChunkPayload(b, data []byte) []byte {
	b = append(b, `{"data":"`...)
	n, k := len(b), base64.StdEncoding.EncodedLen(len(data))
	b = slices.Grow(b, k)[:n+k]
	base64.StdEncoding.Encode(b[n:], data)
	b = append(b, `","encoding":"base64","size":`...)
	b = strconv.AppendInt(b, int64(len(data)), 10)
	return append(b, '}')
}

var payloadBufs = sync.Pool{New: func() any { b := make([]byte, 0, 48<<10); return &b }}

var chunkBufs = sync.Pool{New: func() any { b := make([]byte, protocol.MaxChunk); return &b }}

// stream sends the header, one chunk per backend read (at most 32 KiB),
// then the end. Sends block while the connection is busy, so a slow control
// plane slows the backend read instead of growing memory.
func (o *responder) stream(resp *http.Response) {
	err := o.c.Send(o.ctx, protocol.TypeProxyResponseHeader, o.id, protocol.ProxyResponseHeader{
		Status: resp.StatusCode, Headers: responseHeaders(resp.Header, resp.StatusCode),
	})
	if err != nil {
		o.fail(err)
		return
	}
	o.sent = true
	bp := chunkBufs.Get().(*[]byte)
	defer chunkBufs.Put(bp)
	buf := *bp
	var total int
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			if o.ctx.Err() != nil {
				o.fail(context.Cause(o.ctx))
				return
			}
			pb := payloadBufs.Get().(*[]byte)
			*pb = appendChunkPayload((*pb)[:0], buf[:n])
			err := o.c.Send(o.ctx, protocol.TypeProxyResponseChunk, o.id, json.RawMessage(*pb))
			payloadBufs.Put(pb)
			if err != nil {
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
