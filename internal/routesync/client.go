package routesync

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/backoff"
	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
)

// Operation names, used in errors, logs and the attempt hook.
const (
	OpRegister   = "register"
	OpSync       = "sync"
	OpUnregister = "unregister"
)

// StatusError is a non-200 answer from the route API.
type StatusError struct {
	Op   string
	Code int
	Body string // first bytes of the answer, for the operator
}

func (e *StatusError) Error() string {
	msg := fmt.Sprintf("route %s: control plane answered HTTP %d", e.Op, e.Code)
	if e.Body != "" {
		msg += ": " + e.Body
	}
	if e.Code == http.StatusUnauthorized || e.Code == http.StatusForbidden {
		msg += " (check the agent token, pipeops.token)"
	}
	return msg
}

// Retryable reports whether another attempt may succeed: 429 and 5xx are
// transient; every other non-200 answer is final (§9.1).
func (e *StatusError) Retryable() bool {
	return e.Code == http.StatusTooManyRequests || e.Code >= 500
}

// IsPermanent reports whether err is an answer that retrying will not change.
func IsPermanent(err error) bool {
	var se *StatusError
	return errors.As(err, &se) && !se.Retryable()
}

// Client calls the route registration REST API (§9.1). It is safe for concurrent use.
type Client struct {
	// BaseURL is PIPEOPS_API_URL as given; its path is kept as a prefix.
	BaseURL string
	// Token returns the Bearer token for each call.
	Token func() string
	// HTTP sends the requests; redirects are not followed (a POST must not turn into a GET).
	HTTP *http.Client
	// Timeout bounds one attempt (30 s).
	Timeout time.Duration
	// Attempts per call (3) and the delays between them: 1 s, then 2 s, ±25 %.
	Attempts  int
	RetryBase time.Duration
	// OnAttempt, if set, is told about every HTTP attempt (metrics).
	OnAttempt func(op string, err error)
}

// NewClient returns a client with the spec's defaults.
func NewClient(baseURL string, token func() string, hc *http.Client) *Client {
	if hc == nil {
		hc = &http.Client{}
	}
	nc := *hc
	nc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &Client{BaseURL: strings.TrimRight(baseURL, "/"), Token: token, HTTP: &nc, Timeout: 30 * time.Second,
		Attempts: 3, RetryBase: time.Second}
}

// Register announces one route.
func (c *Client) Register(ctx context.Context, body *protocol.RouteRegister) error {
	return c.post(ctx, OpRegister, protocol.PathRoutesRegister, body, 15*time.Second)
}

// Sync replaces the cluster's whole route set; the delay between attempts is capped at 10 s.
func (c *Client) Sync(ctx context.Context, body *protocol.RouteSync) error {
	return c.post(ctx, OpSync, protocol.PathRoutesSync, body, 10*time.Second)
}

// Unregister removes every route of a host.
func (c *Client) Unregister(ctx context.Context, host string) error {
	return c.post(ctx, OpUnregister, protocol.PathRoutesUnregister, &protocol.RouteUnregister{Hostname: host}, 15*time.Second)
}

func (c *Client) post(ctx context.Context, op, path string, body any, maxDelay time.Duration) error {
	payload, err := json.Marshal(body)
	if err != nil {
		return fmt.Errorf("route %s: encode body: %w", op, err)
	}
	bo := backoff.New(c.RetryBase, maxDelay)
	attempts := max(c.Attempts, 1)
	for i := 1; ; i++ {
		err = c.once(ctx, op, path, payload)
		if c.OnAttempt != nil {
			c.OnAttempt(op, err)
		}
		if err == nil || IsPermanent(err) || i >= attempts || ctx.Err() != nil {
			return err
		}
		t := time.NewTimer(bo.Next())
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
	}
}

func (c *Client) once(ctx context.Context, op, path string, payload []byte) error {
	if c.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.Timeout)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.BaseURL+path, bytes.NewReader(payload))
	if err != nil {
		return &StatusError{Op: op, Code: 0, Body: "invalid pipeops.api_url: " + err.Error()}
	}
	req.Header.Set("Content-Type", "application/json")
	if c.Token != nil {
		req.Header.Set("Authorization", "Bearer "+c.Token())
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return fmt.Errorf("route %s: %w", op, err)
	}
	defer resp.Body.Close()
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20)) // reuse the connection
	if resp.StatusCode == http.StatusOK {
		return nil
	}
	return &StatusError{Op: op, Code: resp.StatusCode, Body: strings.TrimSpace(string(snippet))}
}
