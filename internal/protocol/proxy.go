package protocol

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// ProxyRequest is the payload of `proxy_request` (protocol.md §6.1). The
// control plane is loose about types, so several fields decode flexibly:
// headers take string or []string values, body a string or any JSON value,
// timeout milliseconds or a Go duration, numbers may arrive as floats.
type ProxyRequest struct {
	Method       string  `json:"method,omitempty"`
	Path         string  `json:"path,omitempty"`
	Query        string  `json:"query,omitempty"`
	Headers      Headers `json:"headers,omitempty"`
	Body         Body    `json:"body,omitempty"`
	BodyEncoding string  `json:"body_encoding,omitempty"`
	BodyBinary   bool    `json:"body_binary,omitempty"`
	BodySize     FlexInt `json:"body_size,omitempty"`
	UseStreaming bool    `json:"use_streaming,omitempty"`
	// StreamingAlias is the `streaming` spelling of use_streaming.
	StreamingAlias bool   `json:"streaming,omitempty"`
	Scheme         string `json:"scheme,omitempty"`
	IsWebSocket    bool   `json:"is_websocket,omitempty"`
	// IsWebSocketAlias is the `isWebSocket` spelling of is_websocket.
	IsWebSocketAlias          bool    `json:"isWebSocket,omitempty"`
	Protocol                  string  `json:"protocol,omitempty"`
	SupportsStreaming         bool    `json:"supports_streaming,omitempty"`
	SupportsResponseStreaming bool    `json:"supports_response_streaming,omitempty"`
	Deadline                  string  `json:"deadline,omitempty"`
	Timeout                   Timeout `json:"timeout,omitempty"`
	Namespace                 string  `json:"namespace,omitempty"`
	ServiceName               string  `json:"service_name,omitempty"`
	ServicePort               FlexInt `json:"service_port,omitempty"`
	ClusterID                 string  `json:"cluster_id,omitempty"`
	ClusterUUID               string  `json:"cluster_uuid,omitempty"`
	AgentID                   string  `json:"agent_id,omitempty"`
}

// Streamed reports whether the body arrives as proxy_request_chunk messages.
func (r *ProxyRequest) Streamed() bool { return r.UseStreaming || r.StreamingAlias }

// WebSocketFlag reports whether the payload itself marks a WebSocket
// (is_websocket, isWebSocket or protocol); headers are checked separately.
func (r *ProxyRequest) WebSocketFlag() bool {
	return r.IsWebSocket || r.IsWebSocketAlias || r.Protocol != ""
}

// InlineBody decodes the inline body per body_encoding (§6.2 mode 1).
func (r *ProxyRequest) InlineBody() ([]byte, error) {
	if len(r.Body) == 0 {
		return nil, nil
	}
	if strings.EqualFold(r.BodyEncoding, "base64") {
		b, err := base64.StdEncoding.DecodeString(string(r.Body))
		if err != nil {
			return nil, fmt.Errorf("decode base64 body: %w", err)
		}
		return b, nil
	}
	return r.Body, nil
}

// ParsedDeadline parses `deadline` (RFC 3339); the zero time when absent.
func (r *ProxyRequest) ParsedDeadline() (time.Time, error) {
	if r.Deadline == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, r.Deadline)
	if err != nil {
		return time.Time{}, fmt.Errorf("parse deadline %q (want RFC 3339): %w", r.Deadline, err)
	}
	return t, nil
}

// Headers is an HTTP header map whose JSON values may be a string or a
// list of strings (§6.1). It always encodes as string → []string.
type Headers map[string][]string

// UnmarshalJSON accepts string, []string, numbers and null values.
func (h *Headers) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*h = nil
		return nil
	}
	// Fast path: every value a list of strings (what control planes send),
	// decoded in one pass. A null anywhere takes the general path, which
	// treats a null value and a null item its own way.
	if !bytes.Contains(b, []byte("null")) {
		var fast map[string][]string
		if json.Unmarshal(b, &fast) == nil {
			for k, v := range fast {
				if len(v) == 0 {
					delete(fast, k) // as the general path: no values, no key
				}
			}
			if fast == nil {
				fast = Headers{}
			}
			*h = fast
			return nil
		}
	}
	return h.unmarshalGeneral(b)
}

// unmarshalGeneral decodes every value form §6.1 allows, one by one.
func (h *Headers) unmarshalGeneral(b []byte) error {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return fmt.Errorf("headers: %w", err)
	}
	out := make(Headers, len(raw))
	for k, v := range raw {
		v = bytes.TrimSpace(v)
		switch {
		case len(v) == 0 || string(v) == "null":
		case v[0] == '[':
			var items []json.RawMessage
			if err := json.Unmarshal(v, &items); err != nil {
				return fmt.Errorf("header %q: %w", k, err)
			}
			for _, it := range items {
				s, err := scalarString(it)
				if err != nil {
					return fmt.Errorf("header %q: %w", k, err)
				}
				out[k] = append(out[k], s)
			}
		default:
			s, err := scalarString(v)
			if err != nil {
				return fmt.Errorf("header %q: %w", k, err)
			}
			out[k] = append(out[k], s)
		}
	}
	*h = out
	return nil
}

// Get returns the first value of key, matched case-insensitively.
func (h Headers) Get(key string) string {
	if v, ok := h[key]; ok && len(v) > 0 {
		return v[0]
	}
	for k, v := range h {
		if len(v) > 0 && strings.EqualFold(k, key) {
			return v[0]
		}
	}
	return ""
}

// scalarString renders a JSON string, number or boolean as a header value.
func scalarString(v json.RawMessage) (string, error) {
	if len(v) > 0 && v[0] == '"' {
		var s string
		err := json.Unmarshal(v, &s)
		return s, err
	}
	var x any
	if err := json.Unmarshal(v, &x); err != nil {
		return "", err
	}
	switch t := x.(type) {
	case float64, bool:
		return strings.TrimSpace(string(v)), nil
	default:
		return "", fmt.Errorf("unsupported value %T", t)
	}
}

// Body is a request body as sent: a JSON string is taken as text (base64 or
// raw, per body_encoding); an object or array is kept as its JSON bytes
// (§6.1 "re-marshalled to JSON"). It encodes as a JSON string.
type Body []byte

// UnmarshalJSON implements the flexible decoding.
func (b *Body) UnmarshalJSON(data []byte) error {
	data = bytes.TrimSpace(data)
	switch {
	case len(data) == 0 || string(data) == "null":
		*b = nil
	case data[0] == '"':
		var s string
		if err := json.Unmarshal(data, &s); err != nil {
			return fmt.Errorf("body: %w", err)
		}
		*b = Body(s)
	default:
		var buf bytes.Buffer
		if err := json.Compact(&buf, data); err != nil {
			return fmt.Errorf("body: %w", err)
		}
		*b = buf.Bytes()
	}
	return nil
}

// MarshalJSON writes the body as a JSON string.
func (b Body) MarshalJSON() ([]byte, error) { return json.Marshal(string(b)) }

// Timeout is proxy_request.timeout: a JSON number means milliseconds
// (confirmed against the reference, §15.2), a string is a Go duration, and a
// string of digits is milliseconds too. It encodes as milliseconds.
type Timeout time.Duration

// UnmarshalJSON implements the flexible decoding.
func (t *Timeout) UnmarshalJSON(data []byte) error {
	data = bytes.TrimSpace(data)
	if len(data) == 0 || string(data) == "null" {
		*t = 0
		return nil
	}
	if data[0] == '"' {
		var s string
		if err := json.Unmarshal(data, &s); err != nil {
			return fmt.Errorf("timeout: %w", err)
		}
		s = strings.TrimSpace(s)
		if s == "" {
			*t = 0
			return nil
		}
		if ms, err := strconv.ParseFloat(s, 64); err == nil {
			return t.setMillis(ms)
		}
		d, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("timeout %q: want milliseconds or a duration like \"90s\": %w", s, err)
		}
		*t = Timeout(d)
		return nil
	}
	var ms float64
	if err := json.Unmarshal(data, &ms); err != nil {
		return fmt.Errorf("timeout: %w", err)
	}
	return t.setMillis(ms)
}

func (t *Timeout) setMillis(ms float64) error {
	if math.IsNaN(ms) || math.IsInf(ms, 0) || ms < 0 || ms > float64(math.MaxInt64/int64(time.Millisecond)) {
		return fmt.Errorf("timeout %v ms is out of range", ms)
	}
	*t = Timeout(time.Duration(ms * float64(time.Millisecond)))
	return nil
}

// MarshalJSON writes whole milliseconds.
func (t Timeout) MarshalJSON() ([]byte, error) {
	return strconv.AppendInt(nil, time.Duration(t).Milliseconds(), 10), nil
}

// FlexInt is an integer that may arrive as a float (8080.0) or a string.
type FlexInt int64

// UnmarshalJSON implements the flexible decoding.
func (n *FlexInt) UnmarshalJSON(data []byte) error {
	data = bytes.TrimSpace(data)
	if len(data) == 0 || string(data) == "null" {
		*n = 0
		return nil
	}
	s := string(data)
	if data[0] == '"' {
		if err := json.Unmarshal(data, &s); err != nil {
			return err
		}
		if strings.TrimSpace(s) == "" {
			*n = 0
			return nil
		}
	}
	f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || f != math.Trunc(f) || math.Abs(f) > 1<<53 {
		return fmt.Errorf("want an integer, got %s", data)
	}
	*n = FlexInt(f)
	return nil
}

// ProxyRequestChunk is the payload of `proxy_request_chunk`: base64 in
// `data`, or in `chunk`.
type ProxyRequestChunk struct {
	Data  string `json:"data,omitempty"`
	Chunk string `json:"chunk,omitempty"`
}

// Bytes decodes whichever field is set.
func (c *ProxyRequestChunk) Bytes() ([]byte, error) {
	s := c.Data
	if s == "" {
		s = c.Chunk
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("decode chunk: %w", err)
	}
	return b, nil
}

// ProxyResponse is the buffered answer (§4.3). Body is omitted when empty;
// Encoding is "base64" or "gzip" (base64 of the gzipped body).
type ProxyResponse struct {
	Status   int                 `json:"status"`
	Headers  map[string][]string `json:"headers"`
	Body     string              `json:"body,omitempty"`
	Encoding string              `json:"encoding,omitempty"`
}

// ProxyResponseHeader starts a streamed response (§4.3).
type ProxyResponseHeader struct {
	Status  int                 `json:"status"`
	Headers map[string][]string `json:"headers"`
}

// ProxyResponseChunk is one streamed piece, at most MaxChunk raw bytes.
type ProxyResponseChunk struct {
	Data     string `json:"data"`
	Encoding string `json:"encoding"`
	Size     int    `json:"size"`
}

// MaxChunk is the largest raw size of one proxy_response_chunk (§4.3).
const MaxChunk = 32 << 10

// ProxyResponseAbort ends a streamed response with an error.
type ProxyResponseAbort struct {
	Error string `json:"error"`
}

// WebSocketStart is the payload of `proxy_websocket_start` / `ws_start`
// (§5.1, §6.8).
type WebSocketStart struct {
	StreamID string  `json:"stream_id"`
	Method   string  `json:"method,omitempty"`
	Path     string  `json:"path,omitempty"`
	Query    string  `json:"query,omitempty"`
	Protocol string  `json:"protocol,omitempty"`
	Headers  Headers `json:"headers,omitempty"`
	// RawFrames is an extension of the reference control plane
	// (internal/devplane), which relays a real kubectl: it turns off the
	// §6.8 channel translation so the channel byte survives. The PipeOps
	// control plane never sets it, and agents that do not know it ignore it.
	RawFrames bool `json:"raw_frames,omitempty"`
}

// WebSocketData is the payload of `proxy_websocket_data` / `ws_data` in
// both directions (§4.4, §5.1). Data is base64 of [opcode][frame bytes].
type WebSocketData struct {
	RequestID   string  `json:"request_id,omitempty"`
	StreamID    string  `json:"stream_id,omitempty"`
	Data        string  `json:"data"`
	MessageType FlexInt `json:"message_type,omitempty"`
}

// WebSocketClose is the payload of `proxy_websocket_close` / `ws_close`.
type WebSocketClose struct {
	StreamID  string `json:"stream_id,omitempty"`
	RequestID string `json:"request_id,omitempty"`
}

// BackpressurePayload is the payload of `backpressure` (§4.5).
type BackpressurePayload struct {
	RequestID string `json:"request_id"`
	Reason    string `json:"reason"`
}

// TCPTunnelClose is the payload of `tcp_tunnel_close` (§4.6).
type TCPTunnelClose struct {
	Reason        string `json:"reason"`
	BytesSent     int64  `json:"bytes_sent,omitempty"`
	BytesReceived int64  `json:"bytes_received,omitempty"`
	DurationMs    int64  `json:"duration_ms,omitempty"`
	Error         string `json:"error,omitempty"`
}
