// Package protocol holds the wire format of protocol.md shared by the agent
// (internal/controlplane and its handlers) and the reference control plane
// (internal/devplane): the JSON envelope, message type names and payloads,
// and the interfaces through which the agent's connection and its message
// handlers meet (Conn, Handler; handler.go). It has no behaviour beyond
// encoding and decoding.
package protocol

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// TimeFormat is RFC 3339 with nanoseconds and the local offset (§3).
const TimeFormat = time.RFC3339Nano

// Envelope is every text message in either direction (§3). Unknown fields
// are ignored. Payload is kept raw so each handler decodes its own type.
type Envelope struct {
	Type      string          `json:"type"`
	RequestID string          `json:"request_id,omitempty"`
	Payload   json.RawMessage `json:"payload"`
	Timestamp string          `json:"timestamp,omitempty"`
	// Received is when the agent read the message off its connection (set
	// by the reader, never on the wire): the start of the agent's own time
	// on a request.
	Received time.Time `json:"-"`
}

// ErrMalformed marks an inbound message that is not a valid envelope.
var ErrMalformed = errors.New("malformed message")

// Decode parses one inbound message. It never panics; bad input yields an
// error wrapping ErrMalformed.
func Decode(b []byte) (*Envelope, error) {
	var e Envelope
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if e.Type == "" {
		return nil, fmt.Errorf("%w: no type", ErrMalformed)
	}
	if len(e.Payload) == 0 || string(e.Payload) == "null" {
		e.Payload = json.RawMessage("{}")
	}
	return &e, nil
}

// PayloadAppender is a payload that writes its own JSON straight into the
// envelope, so a large body is encoded once, in place, with no intermediate
// copy (a buffered proxy_response). AppendPayload appends exactly one valid
// JSON value of at most PayloadSize bytes.
type PayloadAppender interface {
	PayloadSize() int
	AppendPayload(b []byte) []byte
}

// EnvelopeOverhead bounds what an envelope adds to its payload, besides
// the type and request id: the field names, quotes and the timestamp.
const EnvelopeOverhead = 128

// Encode builds an outbound envelope. payload nil becomes {} (agent
// messages always carry a payload). The envelope is written field by field
// in the order of the Envelope struct; only a payload that is neither a
// PayloadAppender nor raw JSON goes through encoding/json.
func Encode(typ, requestID string, payload any, now time.Time) ([]byte, error) {
	var raw []byte
	switch p := payload.(type) {
	case nil:
		raw = []byte("{}")
	case PayloadAppender:
		return appendEnvelope(typ, requestID, p, now), nil
	case json.RawMessage:
		if !json.Valid(p) {
			return nil, fmt.Errorf("encode %s payload: invalid JSON", typ)
		}
		raw = p
	default:
		b, err := json.Marshal(p)
		if err != nil {
			return nil, fmt.Errorf("encode %s payload: %w", typ, err)
		}
		raw = b
	}
	return appendEnvelope(typ, requestID, rawPayload(raw), now), nil
}

// rawPayload is a payload already encoded as JSON.
type rawPayload []byte

func (r rawPayload) PayloadSize() int              { return len(r) }
func (r rawPayload) AppendPayload(b []byte) []byte { return append(b, r...) }

// DecodePayload unmarshals the payload into v.
func (e *Envelope) DecodePayload(v any) error {
	if err := json.Unmarshal(e.Payload, v); err != nil {
		return fmt.Errorf("%w: %s payload: %w", ErrMalformed, e.Type, err)
	}
	return nil
}

// appendEnvelope writes the envelope with p's payload: the same fields in
// the same order as the Envelope struct, in one allocation of the right
// size for plain ASCII type and id.
func appendEnvelope(typ, requestID string, p PayloadAppender, now time.Time) []byte {
	b := make([]byte, 0, len(typ)+len(requestID)+len(TimeFormat)+p.PayloadSize()+EnvelopeOverhead)
	b = AppendString(append(b, `{"type":`...), typ)
	if requestID != "" {
		b = AppendString(append(b, `,"request_id":`...), requestID)
	}
	b = p.AppendPayload(append(b, `,"payload":`...))
	b = now.AppendFormat(append(b, `,"timestamp":"`...), TimeFormat)
	return append(b, `"}`...)
}
