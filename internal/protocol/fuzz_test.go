package protocol

import (
	"errors"
	"testing"
	"time"
)

// FuzzDecode feeds arbitrary bytes to the envelope decoder: it must never
// panic, must fail only with ErrMalformed, and whatever it accepts must
// survive re-encoding and payload decoding. Corpus: testdata/fuzz/FuzzDecode.
// CI runs: go test -run=^$ -fuzz=FuzzDecode -fuzztime=10s ./internal/protocol
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		`{"type":"register_success","request_id":"req_1_agent-1","payload":{"cluster_id":"c-1","gateway_ws_url":"wss://g/ws"}}`,
		`{"type":"proxy_request","request_id":"r-42","payload":{"method":"GET","path":"/api","headers":{"A":["b"]},"timeout":30000.0}}`,
		`{"type":"error","payload":{"error":"cluster not found"}}`,
		`{"type":"ws_data","payload":{"stream_id":"s-9","data":"AWxzCg=="},"extra":[1,2,{"x":null}]}`,
		`{"type":"ping","payload":null}`,
		`{"type":"","payload":{}}`,
		`{"type":5}`,
		`[]`,
		"{\"type\":\"x\",\"payload\":\"\xff\"}",
		`{`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := Decode(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("Decode error %v does not wrap ErrMalformed", err)
			}
			return
		}
		if e.Type == "" || len(e.Payload) == 0 {
			t.Fatalf("accepted envelope without type or payload: %+v", e)
		}
		var anyPayload any
		_ = e.DecodePayload(&anyPayload)
		var reg RegisterSuccess
		if err := e.DecodePayload(&reg); err != nil && !errors.Is(err, ErrMalformed) {
			t.Fatalf("DecodePayload error %v does not wrap ErrMalformed", err)
		}
		out, err := Encode(e.Type, e.RequestID, e.Payload, time.Unix(0, 0))
		if err != nil {
			return // a payload that is valid JSON for Decode but not re-marshalable raw is fine to refuse
		}
		if _, err := Decode(out); err != nil {
			t.Fatalf("re-encoded envelope does not decode: %v\n%s", err, out)
		}
	})
}
