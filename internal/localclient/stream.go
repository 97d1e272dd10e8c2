package localclient

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
)

// Stream sends one request whose answer is NDJSON (application/x-ndjson)
// and calls fn with each line until the agent ends the stream, fn returns
// an error, or ctx ends. A non-2xx answer is returned as Do returns it.
func (c *Client) Stream(ctx context.Context, method, path string, fn func(line []byte) error) error {
	resp, err := c.send(ctx, method, path, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
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
