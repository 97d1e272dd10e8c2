package localclient

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"syscall"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
)

// Stream sends one request whose answer is NDJSON (application/x-ndjson)
// and calls fn with each line until the agent ends the stream, fn returns
// an error, or ctx ends. A non-2xx answer is returned as Do returns it.
func (c *Client) Stream(ctx context.Context, method, path string, fn func(line []byte) error) error {
	req, err := http.NewRequestWithContext(ctx, method, "http://local-pipeops-agent"+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.http().Do(req)
	if err != nil {
		switch {
		case errors.Is(err, os.ErrNotExist), errors.Is(err, syscall.ENOENT), errors.Is(err, syscall.ECONNREFUSED):
			return fmt.Errorf("%w (no answer on %s)", ErrAgentNotRunning, c.SocketPath())
		case errors.Is(err, os.ErrPermission), errors.Is(err, syscall.EACCES):
			return fmt.Errorf("%w: cannot open %s: run with sudo", ErrAccessDenied, c.SocketPath())
		}
		return fmt.Errorf("talk to pipeops-agent on %s: %w", c.SocketPath(), err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		var ae apitype.Error
		if err := json.NewDecoder(resp.Body).Decode(&ae); err != nil || ae.Message == "" {
			return fmt.Errorf("pipeops-agent answered %s", resp.Status)
		}
		if ae.Code == apitype.CodeAccessDenied {
			return fmt.Errorf("%w: %w", ErrAccessDenied, &ae)
		}
		return &ae
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		if len(sc.Bytes()) == 0 {
			continue
		}
		if err := fn(sc.Bytes()); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil && !errors.Is(err, io.EOF) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("read stream from pipeops-agent: %w", err)
	}
	return nil
}

// Monitoring returns GET /v1/monitoring.
func (c *Client) Monitoring(ctx context.Context) (*apitype.MonitoringStatus, error) {
	var st apitype.MonitoringStatus
	if err := c.Do(ctx, http.MethodGet, "/v1/monitoring", nil, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// MonitoringAction runs POST /v1/monitoring/<action> (install or uninstall)
// and calls fn for each progress event; the last one has Done set.
func (c *Client) MonitoringAction(ctx context.Context, action string, fn func(apitype.MonitoringEvent) error) error {
	return c.Stream(ctx, http.MethodPost, "/v1/monitoring/"+action, func(line []byte) error {
		var ev apitype.MonitoringEvent
		if err := json.Unmarshal(line, &ev); err != nil {
			return fmt.Errorf("decode progress from pipeops-agent: %w", err)
		}
		return fn(ev)
	})
}
