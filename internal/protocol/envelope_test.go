package protocol

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestEncodeDecodeRoundTrip(t *testing.T) {
	now := time.Date(2026, 6, 16, 4, 50, 28, 123456789, time.UTC)
	b, err := Encode(TypeHeartbeat, "", map[string]any{"status": "healthy"}, now)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"timestamp":"2026-06-16T04:50:28.123456789Z"`) || strings.Contains(string(b), "request_id") {
		t.Fatalf("Encode = %s", b)
	}
	e, err := Decode(b)
	if err != nil || e.Type != TypeHeartbeat {
		t.Fatalf("Decode = %+v, %v", e, err)
	}
	var p struct{ Status string }
	if err := e.DecodePayload(&p); err != nil || p.Status != "healthy" {
		t.Fatalf("payload = %+v, %v", p, err)
	}
}

func TestDecodeRejectsGarbageWithoutPanicking(t *testing.T) {
	for _, in := range []string{"", "{", "[]", `{"payload":{}}`, `"x"`, `{"type":5}`, "\x00\xff"} {
		if _, err := Decode([]byte(in)); !errors.Is(err, ErrMalformed) {
			t.Errorf("Decode(%q) = %v; want ErrMalformed", in, err)
		}
	}
	e, err := Decode([]byte(`{"type":"ping","extra":1}`))
	if err != nil || string(e.Payload) != "{}" {
		t.Fatalf("Decode with missing payload = %+v, %v; want empty object payload", e, err)
	}
}

// rawAppender is a PayloadAppender over fixed JSON.
type rawAppender []byte

func (r rawAppender) PayloadSize() int              { return len(r) }
func (r rawAppender) AppendPayload(b []byte) []byte { return append(b, r...) }

func TestAnAppendedPayloadEncodesExactlyLikeARawOne(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	payload := `{"status":200,"headers":{"A":["b"]},"body":"aGk=","encoding":"base64"}`
	for _, id := range []string{"", "r-1", `we"ird<id>`} {
		want, err := Encode(TypeProxyResponse, id, json.RawMessage(payload), now)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Encode(TypeProxyResponse, id, rawAppender(payload), now)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(want) {
			t.Errorf("request id %q:\n got %s\nwant %s", id, got, want)
		}
		if cap(got) > len(got)+EnvelopeOverhead+len(id)*6 {
			t.Errorf("allocated %d bytes for a %d-byte envelope", cap(got), len(got))
		}
	}
}
