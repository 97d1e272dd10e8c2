package routesync

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
)

func TestClientRetriesOnlyTransientAnswers(t *testing.T) {
	cases := []struct {
		name      string
		codes     []int // answers in order; the last one repeats
		wantCalls int32
		wantErr   bool
		permanent bool
	}{
		{"200 at once", []int{200}, 1, false, false},
		{"503 twice then 200", []int{503, 503, 200}, 3, false, false},
		{"503 three times gives up after 3 attempts", []int{503}, 3, true, false},
		{"429 is retried", []int{429, 200}, 2, false, false},
		{"400 is not retried", []int{400}, 1, true, true},
		{"401 is not retried", []int{401}, 1, true, true},
		{"404 is not retried", []int{404}, 1, true, true},
		{"201 is not success", []int{201}, 1, true, true},
		{"a redirect is not followed", []int{307}, 1, true, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var calls atomic.Int32
			var auth, ctype atomic.Value
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				n := int(calls.Add(1)) - 1
				auth.Store(r.Header.Get("Authorization"))
				ctype.Store(r.Header.Get("Content-Type"))
				code := c.codes[min(n, len(c.codes)-1)]
				if code == 307 {
					w.Header().Set("Location", "/elsewhere")
				}
				w.WriteHeader(code)
			}))
			defer srv.Close()
			cl := NewClient(srv.URL+"/", func() string { return "s3cret" }, nil)
			cl.RetryBase = time.Millisecond
			var attempts atomic.Int32
			cl.OnAttempt = func(op string, err error) {
				if op == OpSync {
					attempts.Add(1)
				}
			}
			err := cl.Sync(context.Background(), &protocol.RouteSync{ClusterUUID: "c"})
			if (err != nil) != c.wantErr || calls.Load() != c.wantCalls || attempts.Load() != c.wantCalls {
				t.Fatalf("err=%v calls=%d attempts=%d; want err=%v calls=%d", err, calls.Load(), attempts.Load(), c.wantErr, c.wantCalls)
			}
			if IsPermanent(err) != c.permanent {
				t.Fatalf("IsPermanent(%v) = %v; want %v", err, IsPermanent(err), c.permanent)
			}
			if auth.Load() != "Bearer s3cret" || ctype.Load() != "application/json" {
				t.Fatalf("headers: Authorization %q, Content-Type %q", auth.Load(), ctype.Load())
			}
		})
	}
}

func TestClientGivesUpWhenTheContextEnds(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(503) }))
	defer srv.Close()
	cl := NewClient(srv.URL, func() string { return "t" }, nil)
	cl.RetryBase = time.Hour
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := cl.Register(ctx, &protocol.RouteRegister{Hostname: "a"})
	var se *StatusError
	if !errors.As(err, &se) || se.Code != 503 {
		t.Fatalf("err = %v; want the 503", err)
	}
	if time.Since(start) > 10*time.Second {
		t.Fatal("the retry delay ignored the cancelled context")
	}
}
