package protocol

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

func TestProxyRequestDecodesLooseTypes(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want func(t *testing.T, r *ProxyRequest)
	}{
		{"timeout as a number is milliseconds", `{"timeout":30000}`, func(t *testing.T, r *ProxyRequest) {
			if time.Duration(r.Timeout) != 30*time.Second {
				t.Errorf("timeout = %v; want 30s", time.Duration(r.Timeout))
			}
		}},
		{"timeout as a float is milliseconds", `{"timeout":1500.0}`, func(t *testing.T, r *ProxyRequest) {
			if time.Duration(r.Timeout) != 1500*time.Millisecond {
				t.Errorf("timeout = %v; want 1.5s", time.Duration(r.Timeout))
			}
		}},
		{"timeout as a duration string", `{"timeout":"90s"}`, func(t *testing.T, r *ProxyRequest) {
			if time.Duration(r.Timeout) != 90*time.Second {
				t.Errorf("timeout = %v; want 90s", time.Duration(r.Timeout))
			}
		}},
		{"timeout as a digit string is milliseconds", `{"timeout":"250"}`, func(t *testing.T, r *ProxyRequest) {
			if time.Duration(r.Timeout) != 250*time.Millisecond {
				t.Errorf("timeout = %v; want 250ms", time.Duration(r.Timeout))
			}
		}},
		{"headers with string and list values", `{"headers":{"Accept":"application/json","X-Multi":["a","b"],"X-Num":5,"X-Nil":null}}`, func(t *testing.T, r *ProxyRequest) {
			want := Headers{"Accept": {"application/json"}, "X-Multi": {"a", "b"}, "X-Num": {"5"}}
			if !reflect.DeepEqual(r.Headers, want) {
				t.Errorf("headers = %v; want %v", r.Headers, want)
			}
			if r.Headers.Get("accept") != "application/json" {
				t.Errorf("Get(accept) = %q", r.Headers.Get("accept"))
			}
		}},
		{"body as an object is re-marshalled JSON", `{"body":{"a": 1, "b":[true]}}`, func(t *testing.T, r *ProxyRequest) {
			if string(r.Body) != `{"a":1,"b":[true]}` {
				t.Errorf("body = %s", r.Body)
			}
		}},
		{"body as base64 text", `{"body":"aGVsbG8=","body_encoding":"base64"}`, func(t *testing.T, r *ProxyRequest) {
			b, err := r.InlineBody()
			if err != nil || string(b) != "hello" {
				t.Errorf("InlineBody() = %q, %v; want hello", b, err)
			}
		}},
		{"body as raw text", `{"body":"plain"}`, func(t *testing.T, r *ProxyRequest) {
			b, err := r.InlineBody()
			if err != nil || string(b) != "plain" {
				t.Errorf("InlineBody() = %q, %v; want plain", b, err)
			}
		}},
		{"service port as a float", `{"service_port":8080.0,"service_name":"web","namespace":"app"}`, func(t *testing.T, r *ProxyRequest) {
			if r.ServicePort != 8080 {
				t.Errorf("service_port = %d", r.ServicePort)
			}
		}},
		{"aliases for streaming and websocket", `{"streaming":true,"isWebSocket":true}`, func(t *testing.T, r *ProxyRequest) {
			if !r.Streamed() || !r.WebSocketFlag() {
				t.Errorf("Streamed() = %v, WebSocketFlag() = %v; want both true", r.Streamed(), r.WebSocketFlag())
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var r ProxyRequest
			if err := json.Unmarshal([]byte(tc.in), &r); err != nil {
				t.Fatalf("Unmarshal(%s) error = %v", tc.in, err)
			}
			tc.want(t, &r)
		})
	}
}

func TestProxyRequestRejectsBadNumbers(t *testing.T) {
	for _, in := range []string{`{"timeout":-5}`, `{"timeout":"soon"}`, `{"service_port":80.5}`, `{"service_port":"x"}`, `{"headers":{"a":{"b":1}}}`} {
		var r ProxyRequest
		if err := json.Unmarshal([]byte(in), &r); err == nil {
			t.Errorf("Unmarshal(%s) error = nil; want an error", in)
		}
	}
}

func TestProxyRequestRoundTripsThroughJSON(t *testing.T) {
	in := ProxyRequest{Method: "POST", Path: "/api/v1/namespaces", Headers: Headers{"A": {"1"}}, Body: Body("{}"),
		Timeout: Timeout(5 * time.Second), ServicePort: 80, SupportsResponseStreaming: true}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var out ProxyRequest
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("Unmarshal(%s) error = %v", b, err)
	}
	if !reflect.DeepEqual(in, out) {
		t.Errorf("round trip = %+v; want %+v (json %s)", out, in, b)
	}
}
