// Package localclient is the typed client pipeopsctl uses to talk to the
// agent's local API over its unix socket. Its zero value works.
package localclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"syscall"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/paths"
)

// ErrAgentNotRunning means nothing answers on the socket.
var ErrAgentNotRunning = errors.New("pipeops-agent is not running")

// ErrAccessDenied means the socket or the action needs root.
var ErrAccessDenied = errors.New("access denied")

// Client talks to one agent.
type Client struct {
	// Socket defaults to $PIPEOPS_SOCKET, else paths.Socket().
	Socket string
	// Dial replaces the unix dialer (tests).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// SocketPath is the socket the client will dial.
func (c *Client) SocketPath() string {
	if c.Socket != "" {
		return c.Socket
	}
	if s := os.Getenv("PIPEOPS_SOCKET"); s != "" {
		return s
	}
	return paths.Socket()
}

func (c *Client) http() *http.Client {
	dial := c.Dial
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	sock := c.SocketPath()
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return dial(ctx, "unix", sock) },
	}}
}

// Do sends one request and decodes a JSON answer into out (may be nil).
func (c *Client) Do(ctx context.Context, method, path string, body io.Reader, out any) error {
	resp, err := c.send(ctx, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decode answer from pipeops-agent: %w", err)
	}
	return nil
}

// send performs one request and returns the open 2xx response, or the error
// a person can act on: agent not running, access denied, or the agent's own
// apitype.Error. The caller closes the body.
func (c *Client) send(ctx context.Context, method, path string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://local-pipeops-agent"+path, body)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http().Do(req)
	if err != nil {
		switch {
		case errors.Is(err, os.ErrNotExist), errors.Is(err, syscall.ENOENT), errors.Is(err, syscall.ECONNREFUSED):
			return nil, fmt.Errorf("%w (no answer on %s)", ErrAgentNotRunning, c.SocketPath())
		case errors.Is(err, os.ErrPermission), errors.Is(err, syscall.EACCES):
			return nil, fmt.Errorf("%w: cannot open %s: run with sudo", ErrAccessDenied, c.SocketPath())
		}
		return nil, fmt.Errorf("talk to pipeops-agent on %s: %w", c.SocketPath(), err)
	}
	if resp.StatusCode < 300 {
		return resp, nil
	}
	defer resp.Body.Close()
	var ae apitype.Error
	if err := json.NewDecoder(resp.Body).Decode(&ae); err != nil || ae.Message == "" {
		return nil, fmt.Errorf("pipeops-agent answered %s", resp.Status)
	}
	if ae.Code == apitype.CodeAccessDenied {
		return nil, fmt.Errorf("%w: %w", ErrAccessDenied, &ae)
	}
	return nil, &ae
}

// Status returns GET /v1/status.
func (c *Client) Status(ctx context.Context) (*apitype.StatusResponse, error) {
	var st apitype.StatusResponse
	if err := c.Do(ctx, http.MethodGet, "/v1/status", nil, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// HA returns GET /v1/ha: this agent's role, who leads and the candidates.
func (c *Client) HA(ctx context.Context) (*apitype.HAStatus, error) {
	var st apitype.HAStatus
	if err := c.Do(ctx, http.MethodGet, "/v1/ha", nil, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// HAStepDown runs POST /v1/ha/step-down: the leader hands over.
func (c *Client) HAStepDown(ctx context.Context) (*apitype.HAStatus, error) {
	var st apitype.HAStatus
	if err := c.Do(ctx, http.MethodPost, "/v1/ha/step-down", nil, &st); err != nil {
		return nil, err
	}
	return &st, nil
}
