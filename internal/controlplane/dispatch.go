package controlplane

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/logging"
	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
	"github.com/pipeops/pipeops-vm-agent/internal/version"
)

// coreTypes are the inbound types the link handles itself.
var coreTypes = []string{
	protocol.TypeRegisterSuccess, protocol.TypeRegisterInProgress, protocol.TypeHeartbeatAck,
	protocol.TypePing, protocol.TypePong, protocol.TypeError,
	protocol.TypeTCPTunnelStart, protocol.TypeTCPTunnelData, protocol.TypeTCPTunnelClose, protocol.TypeUDPTunnelData,
}

// handleText decodes and dispatches one inbound envelope on the reader
// goroutine. Nothing here may panic the process.
func (c *Client) handleText(cn *conn, data []byte) {
	received := time.Now()
	env, err := protocol.Decode(data)
	if err != nil {
		c.metrics.malformed.Inc()
		if ok, n := c.limiter.Allow("malformed"); ok {
			c.log.Warn("ignored a malformed message from the control plane", logging.KeyErr, truncate(err.Error(), 200),
				"bytes", len(data), logging.KeyRepeatsSuppressed, n, logging.KeyGen, cn.gen)
		}
		return
	}
	cn.dispatchLoop.Busy()
	defer cn.dispatchLoop.Idle()
	env.Received = received
	defer func() {
		if r := recover(); r != nil {
			c.metrics.panics.Inc()
			c.log.Error("message handler panicked; message dropped", logging.KeyType, env.Type, logging.KeyRequestID, env.RequestID,
				logging.KeyPanic, fmt.Sprint(r), logging.KeyGen, cn.gen)
		}
	}()
	c.dispatch(cn, env)
}

func (c *Client) dispatch(cn *conn, env *protocol.Envelope) {
	c.hmu.RLock()
	h := c.handlers[env.Type]
	c.hmu.RUnlock()
	switch env.Type {
	case protocol.TypeRegisterSuccess, protocol.TypeRegisterInProgress:
		if !cn.deliverRegister(env) {
			c.log.Debug("ignored an unexpected registration reply", logging.KeyType, env.Type, logging.KeyRequestID, env.RequestID)
		}
		return
	case protocol.TypeError:
		c.handleError(cn, env)
		return
	case protocol.TypeHeartbeatAck, protocol.TypePong:
		c.log.Debug("control plane acknowledged", logging.KeyType, env.Type)
		return
	case protocol.TypePing:
		cn.sendLater(protocol.TypePong, env.RequestID, map[string]string{"timestamp": time.Now().UTC().Format(time.RFC3339)})
		return
	}
	if h != nil {
		h.Handle(cn, env)
		return
	}
	switch env.Type {
	case protocol.TypeTCPTunnelStart:
		// Legacy L4 (§5.3) without a handler: refuse cleanly.
		cn.sendLater(protocol.TypeTCPTunnelClose, env.RequestID, map[string]string{"reason": "unsupported"})
		return
	case protocol.TypeTCPTunnelData, protocol.TypeTCPTunnelClose, protocol.TypeUDPTunnelData:
		return
	}
	c.metrics.unknown.Inc()
	if cn.firstUnknown(env.Type) {
		c.log.Info("unknown message type from the control plane; answering protocol_fallback", logging.KeyType, truncate(env.Type, 64))
		payload := map[string]any{
			"agent_version":    version.Version,
			"unknown_type":     env.Type,
			"supported_types":  c.supportedTypes(),
			"fallback_mode":    "legacy_proxy",
			"protocol_version": "1.0",
			"timestamp":        time.Now().UTC().Format(time.RFC3339),
		}
		if env.RequestID != "" {
			payload["original_request_id"] = env.RequestID
		}
		cn.sendLater(protocol.TypeProtocolFallback, "", payload)
	}
}

// handleError applies §5.1: log; fail a pending register; re-register on
// "not registered" / "cluster not found".
func (c *Client) handleError(cn *conn, env *protocol.Envelope) {
	var p protocol.ErrorPayload
	_ = env.DecodePayload(&p)
	msg := truncate(p.Error, 500)
	if env.RequestID != "" && cn.deliverRegister(env) {
		return
	}
	c.log.Warn("control plane reported an error", logging.KeyErr, msg, logging.KeyRequestID, env.RequestID, logging.KeyGen, cn.gen)
	lower := strings.ToLower(p.Error)
	if strings.Contains(lower, "not registered") || strings.Contains(lower, "cluster not found") {
		cn.signalReregister(msg)
	}
}

// supportedTypes lists what this agent handles, for protocol_fallback.
func (c *Client) supportedTypes() []string {
	out := append([]string{}, coreTypes...)
	c.hmu.RLock()
	for t := range c.handlers {
		out = append(out, t)
	}
	c.hmu.RUnlock()
	slices.Sort(out)
	return slices.Compact(out)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
