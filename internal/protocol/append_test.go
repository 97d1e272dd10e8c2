package protocol

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

// oddStrings need every kind of escape encoding/json knows.
var oddStrings = []string{"", "plain", `quote " and \ backslash`, "<html> & co", "tab\tnewline\n", "\x00\x1f", "ünïcödé ☃",
	"bad utf-8 \xff\xfe", "line sep \u2028 para \u2029", "r-42"}

func TestEncodeWritesTheBytesEncodingJSONWrites(t *testing.T) {
	now := time.Date(2026, 6, 16, 4, 50, 28, 123456789, time.FixedZone("x", 3600))
	payloads := []any{nil, struct{}{}, map[string]any{"status": "healthy", "n": 3},
		ProxyResponseHeader{Status: 200, Headers: map[string][]string{"Content-Type": {"application/json"}}},
		ErrorPayload{Error: "<refused> \"quoted\""}, json.RawMessage(`{"a":[1,2]}`)}
	for _, id := range oddStrings {
		for _, p := range payloads {
			got, err := Encode(TypeProxyResponseHeader, id, p, now)
			if err != nil {
				t.Fatal(err)
			}
			raw, _ := json.Marshal(p)
			if p == nil {
				raw = []byte("{}")
			}
			want, _ := json.Marshal(Envelope{Type: TypeProxyResponseHeader, RequestID: id, Payload: raw, Timestamp: now.Format(TimeFormat)})
			if !bytes.Equal(got, want) {
				t.Errorf("Encode(id %q, %T) =\n%s\nwant\n%s", id, p, got, want)
			}
		}
	}
}

func TestEncodeRefusesARawPayloadThatIsNotJSON(t *testing.T) {
	if _, err := Encode(TypeProxyResponseChunk, "r", json.RawMessage(`{"a":`), time.Now()); err == nil {
		t.Fatal("Encode accepted a truncated raw payload")
	}
}

func TestAppendHeadersWritesTheBytesEncodingJSONWrites(t *testing.T) {
	cases := []map[string][]string{nil, {}, {"A": nil}, {"A": {}}, {"B": {"1", "2"}, "A": {"x"}}}
	for _, s := range oddStrings {
		cases = append(cases, map[string][]string{s: {s, s}, "Z" + s: {s}})
	}
	for _, h := range cases {
		want, _ := json.Marshal(h)
		got := AppendHeaders(nil, h)
		if !bytes.Equal(got, want) {
			t.Errorf("AppendHeaders(%q) = %s; want %s", h, got, want)
		}
		if len(got) > HeadersSize(h) {
			t.Errorf("AppendHeaders(%q) wrote %d bytes; HeadersSize promised at most %d", h, len(got), HeadersSize(h))
		}
	}
}

// headerInputs are header objects in every form §6.1 allows, and some it does not.
var headerInputs = []string{`{}`, `null`, `{"Accept":["application/json"],"X":["1","2"]}`, `{"Accept":"text/plain"}`,
	`{"A":[],"B":["x"]}`, `{"A":null}`, `{"A":[null]}`, `{"A":["nullable"]}`, `{"A":[1,true]}`, `{"A":3.5}`,
	`{"A":["x"],"A":["y"]}`, `{"A":{"b":1}}`, `{"A":["\u00fc\ud800"]}`, `[1]`, `{"A":["x"]`, `{"A":"x","B":["y"]}`}

func TestHeadersDecodeAlikeOnTheFastAndTheGeneralPath(t *testing.T) {
	for _, in := range headerInputs {
		var fast, general Headers
		errFast := json.Unmarshal([]byte(in), &fast)
		errGeneral := general.unmarshalGeneral([]byte(in))
		if in == "null" {
			errGeneral, general = nil, nil
		}
		if (errFast == nil) != (errGeneral == nil) || !reflect.DeepEqual(fast, general) {
			t.Errorf("headers %s: decoded %q (err %v); the general path gives %q (err %v)", in, fast, errFast, general, errGeneral)
		}
	}
}

func FuzzHeadersDecodeAlikeOnTheFastAndTheGeneralPath(f *testing.F) {
	for _, in := range headerInputs {
		f.Add([]byte(in))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		var fast, general Headers
		errFast := fast.UnmarshalJSON(in)
		if string(in) == "null" || !json.Valid(in) {
			return // json.Unmarshal never hands an invalid value to UnmarshalJSON
		}
		errGeneral := general.unmarshalGeneral(in)
		if (errFast == nil) != (errGeneral == nil) || (errFast == nil && !reflect.DeepEqual(fast, general)) {
			t.Errorf("headers %q: decoded %q (err %v); the general path gives %q (err %v)", in, fast, errFast, general, errGeneral)
		}
	})
}
