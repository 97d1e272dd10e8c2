package controlplane

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/health"
	"github.com/pipeops/pipeops-vm-agent/internal/logging"
	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
	"github.com/pipeops/pipeops-vm-agent/internal/version"
)

const (
	heartbeatSendTimeout = 10 * time.Second // §8.5
	telemetryTimeout     = 5 * time.Second
)

// sendHeartbeat builds and sends one heartbeat. A failure means the
// connection is dead (§8.5).
func (c *Client) sendHeartbeat(ctx context.Context, cn *conn) error {
	hctx, cancel := context.WithTimeout(ctx, heartbeatSendTimeout)
	defer cancel()
	hb := c.buildHeartbeat(hctx, cn)
	if err := cn.Send(hctx, protocol.TypeHeartbeat, "", hb); err != nil {
		c.metrics.hbFailed.Inc()
		return fmt.Errorf("send heartbeat: %w", err)
	}
	c.metrics.hbSent.Inc()
	now := time.Now()
	c.updateLink(func(l *apitype.LinkStatus) { l.LastHeartbeat = now })
	c.health.Set(health.ControlPlane, true, fmt.Sprintf("connected to %s (%s)", hostOf(cn.url), cn.mode))
	return nil
}

// buildHeartbeat fills §4.2: identity, status, real telemetry, worker_join
// on k3s servers, then every contributor's part.
func (c *Client) buildHeartbeat(ctx context.Context, cn *conn) protocol.Heartbeat {
	st := c.st.Get()
	tel := c.telemetry(ctx)
	c.mu.Lock()
	status := c.link.State
	k8s := c.k8sVersion
	c.mu.Unlock()
	if tel.K8sVersion != "" {
		k8s = tel.K8sVersion
	}
	hbStatus := heartbeatStatus(status)
	if k, ok := c.health.Get(health.Kubernetes); ok && !k.OK && hbStatus == protocol.StatusHealthy {
		// The cluster behind the link is unreachable: the agent is not
		// healthy, it is reconnecting to its API server. Spec fields only
		// (§4.2); the reason is in /ready, status and the dashboard.
		hbStatus = protocol.StatusReconnecting
	}
	hb := protocol.Heartbeat{
		ClusterID: st.ClusterID, AgentID: c.id(),
		Status: hbStatus, TunnelStatus: "disconnected",
		Metadata: protocol.HeartbeatMetadata{
			AgentVersion: version.Version, K8sVersion: k8s, K8sNodes: tel.Nodes, K8sPods: tel.Pods,
			CPUUsage: tel.CPUUsage, MemoryUsage: tel.MemoryUsage,
		},
	}
	if cn.ctx.Err() == nil {
		hb.TunnelStatus = "connected"
	}
	hb.WorkerJoin = c.workerJoin(ctx)
	c.hmu.RLock()
	contributors := append([]func(context.Context, *protocol.Heartbeat){}, c.contributors...)
	c.hmu.RUnlock()
	for _, fn := range contributors {
		c.contribute(ctx, fn, &hb)
	}
	return hb
}

func (c *Client) contribute(ctx context.Context, fn func(context.Context, *protocol.Heartbeat), hb *protocol.Heartbeat) {
	defer func() {
		if r := recover(); r != nil {
			c.metrics.panics.Inc()
			c.log.Error("heartbeat contributor panicked", logging.KeyPanic, fmt.Sprint(r))
		}
	}()
	fn(ctx, hb)
}

// heartbeatStatus maps the link state to §4.2's values.
func heartbeatStatus(link string) string {
	switch link {
	case apitype.LinkConnected:
		return protocol.StatusHealthy
	case apitype.LinkDisconnected:
		return protocol.StatusDisconnected
	default:
		return protocol.StatusReconnecting
	}
}

// telemetry asks the cluster for fresh figures and falls back to the last
// good ones, so a slow API never delays or blanks a heartbeat.
func (c *Client) telemetry(ctx context.Context) Telemetry {
	tctx, cancel := context.WithTimeout(ctx, telemetryTimeout)
	defer cancel()
	tel, err := c.cluster.Telemetry(tctx)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		if ok, n := c.limiter.Allow("telemetry: " + err.Error()); ok {
			c.log.Warn("cluster telemetry unavailable; sending the last known figures", logging.KeyErr, err, logging.KeyRepeatsSuppressed, n)
		}
		return c.lastTel
	}
	c.lastTel = tel
	return tel
}

// workerJoin builds heartbeat.worker_join when the k3s node token is
// readable (§4.2). The token is never logged.
func (c *Client) workerJoin(ctx context.Context) *protocol.WorkerJoin {
	b, err := os.ReadFile(c.k3sPath)
	if err != nil {
		return nil
	}
	token := strings.TrimSpace(string(b))
	if token == "" {
		return nil
	}
	serverURL := c.joinServerURL(ctx)
	q := func(s string) string { return shellQuote(s) }
	return &protocol.WorkerJoin{
		Provider:  "k3s",
		ServerURL: serverURL,
		Env:       map[string]string{"K3S_URL": serverURL, "K3S_TOKEN": token, "NODE_TYPE": "agent"},
		Commands: []string{
			"curl -fsSL https://get.pipeops.dev/k8-install.sh | sudo env NODE_TYPE=agent K3S_URL=" + q(serverURL) + " K3S_TOKEN=" + q(token) + " bash",
			"curl -sfL https://get.k3s.io | sudo env INSTALL_K3S_EXEC=agent K3S_URL=" + q(serverURL) + " K3S_TOKEN=" + q(token) + " sh -",
		},
		GeneratedAt: time.Now().UTC().Format(time.RFC3339),
	}
}

// shellQuote quotes s for a POSIX shell when it holds anything but safe characters.
func shellQuote(s string) string {
	safe := s != ""
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:=@,+", r)) {
			safe = false
			break
		}
	}
	if safe {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func hostOf(u string) string {
	if i := strings.Index(u, "://"); i >= 0 {
		u = u[i+3:]
	}
	if i := strings.IndexAny(u, "/?"); i >= 0 {
		u = u[:i]
	}
	return u
}
