package controlplane

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/hostinfo"
	"github.com/pipeops/pipeops-vm-agent/internal/logging"
	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
	"github.com/pipeops/pipeops-vm-agent/internal/state"
	"github.com/pipeops/pipeops-vm-agent/internal/version"
)

// registerMaxWait caps the wait when register_in_progress extends it (§8.3).
const registerMaxWait = 120 * time.Second

// register sends `register` and waits for `register_success` (§8.3), then
// persists what it carries.
func (c *Client) register(ctx context.Context, cn *conn, st state.State, k8sVersion, token, ca string) (*protocol.RegisterSuccess, error) {
	c.notReady("registering with the control plane")
	reg := c.buildRegister(st, k8sVersion, token)
	c.applyLocation(ctx, &reg) // server_ip, region, cloud_provider, location metadata (locality.go)
	reqID := fmt.Sprintf("req_%d_%s", time.Now().UnixNano(), c.id())
	replies := cn.expectRegister(reqID)
	sctx, cancel := context.WithTimeout(ctx, writeTimeout)
	err := cn.Send(sctx, protocol.TypeRegister, reqID, reg)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("send register: %w", err)
	}
	start := time.Now()
	timer := time.NewTimer(c.registerTimeout)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-cn.Done():
			return nil, fmt.Errorf("connection lost while registering: %w", cn.Err())
		case reason := <-cn.reregister:
			return nil, fmt.Errorf("registration refused: %s", reason)
		case <-timer.C:
			return nil, fmt.Errorf("no register_success within %s; the control plane may be overloaded", time.Since(start).Round(100*time.Millisecond))
		case env := <-replies:
			switch env.Type {
			case protocol.TypeRegisterInProgress:
				// The control plane is working on it: wait up to 120 s in total.
				if left := registerMaxWait - time.Since(start); left > 0 {
					timer.Reset(left)
				}
			case protocol.TypeError:
				var p protocol.ErrorPayload
				_ = env.DecodePayload(&p)
				return nil, fmt.Errorf("control plane refused registration: %s", p.Error)
			case protocol.TypeRegisterSuccess:
				var rs protocol.RegisterSuccess
				if err := env.DecodePayload(&rs); err != nil {
					return nil, err
				}
				if rs.ClusterID == "" {
					return nil, errors.New("register_success without cluster_id; the control plane answered incorrectly")
				}
				if err := c.persistRegistration(&rs, token, ca); err != nil {
					return nil, err
				}
				c.metrics.registrations.Inc()
				c.updateLink(func(l *apitype.LinkStatus) { l.Registered = true; l.Registrations++ })
				c.log.Info("registered with the control plane", logging.KeyClusterID, rs.ClusterID,
					logging.KeyMode, reg.Metadata["registration_mode"], "gateway", rs.GatewayWSURL != "")
				return &rs, nil
			}
		}
	}
}

func (c *Client) persistRegistration(rs *protocol.RegisterSuccess, token, ca string) error {
	err := c.st.Update(func(s *state.State) error {
		s.ClusterID, s.ClusterUUID, s.GatewayWSURL = rs.ClusterID, rs.ClusterUUID, rs.GatewayWSURL
		// The token we sent; the control plane's `token` is not verified
		// (§14.3), so it is not adopted.
		s.ClusterToken, s.ClusterCAData = token, ca
		s.CredentialsFingerprint = fingerprint(token, ca)
		s.RegisteredAt = time.Now().UTC()
		return nil
	})
	if err != nil {
		return fmt.Errorf("persist registration: %w", err)
	}
	return nil
}

// fingerprint identifies the credentials last registered with (§8.3).
func fingerprint(token, ca string) string {
	h := sha256.Sum256([]byte(token + "\x00" + ca))
	return hex.EncodeToString(h[:])
}

// buildRegister fills every §4.1 field.
func (c *Client) buildRegister(st state.State, k8sVersion, token string) protocol.Register {
	host := hostinfo.Hostname()
	labels := map[string]string{}
	for k, v := range c.cfg.Agent.Labels {
		labels[k] = v
	}
	labels["hostname"] = host
	labels["agent.pipeops.io/version"] = version.Version
	mode := "fresh"
	if st.ClusterID != "" {
		mode = "resume"
	}
	region := c.cfg.Agent.Region
	if region == "" {
		region = "unknown"
	}
	return protocol.Register{
		AgentID: c.id(), Name: c.cfg.Agent.Name, K8sVersion: k8sVersion, Hostname: host,
		AgentVersion: version.Version, ServerIP: c.serverIP(), Region: region,
		CloudProvider:    normaliseProvider(c.cfg.Agent.CloudProvider),
		TunnelPortConfig: protocol.TunnelPortConfig{KubernetesAPI: 6443, Kubelet: 10250, AgentHTTP: c.cfg.Agent.Port},
		Labels:           labels,
		ServerSpecs:      hostinfo.Root("").ReadSpecs(),
		Features:         protocol.AllFeatures,
		Metadata: map[string]string{
			"agent_mode":             "vm-agent",
			"registration_timestamp": time.Now().UTC().Format(time.RFC3339),
			"registration_mode":      mode,
		},
		ClusterID:       st.ClusterID,
		K8sServiceToken: token,
	}
}

// serverIP is the address of the interface that reaches the control
// plane: a UDP "dial" to the api host sends no packet (no public-IP service).
func (c *Client) serverIP() string {
	u, err := url.Parse(c.cfg.PipeOps.APIURL)
	if err == nil && u.Hostname() != "" {
		port := u.Port()
		if port == "" {
			port = "443"
		}
		if ip := hostinfo.OutboundIP(net.JoinHostPort(u.Hostname(), port)); ip != "" {
			return ip
		}
	}
	return "0.0.0.0"
}

// normaliseProvider applies §4.1: default "agent"; on-prem* and baremetal → bare-metal.
func normaliseProvider(p string) string {
	p = strings.ToLower(strings.TrimSpace(p))
	switch {
	case p == "":
		return "agent"
	case strings.HasPrefix(p, "on-prem"), strings.HasPrefix(p, "onprem"), p == "baremetal":
		return "bare-metal"
	}
	return p
}
