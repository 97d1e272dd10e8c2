package controlplane

import (
	"context"
	"net"

	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
)

// applyLocation sets register's location fields from the Locality (§4.1).
func (c *Client) applyLocation(ctx context.Context, reg *protocol.Register) {
	loc := c.location(ctx)
	reg.ServerIP, reg.Region, reg.CloudProvider = loc.ServerIP, loc.Region, loc.CloudProvider
	if reg.Metadata == nil {
		reg.Metadata = map[string]string{}
	}
	for k, v := range loc.Metadata {
		reg.Metadata[k] = v
	}
}

// locationMetadata are the optional register.metadata keys of §4.1 a
// Locality may fill; nothing else reaches the wire.
var locationMetadata = []string{"country_code", "region_name", "country_name", "network_org", "network_asn", "ip_intel_method"}

// location asks the Locality, or falls back to the outbound interface's
// address and the configured region and provider.
func (c *Client) location(ctx context.Context) Location {
	if c.locality != nil {
		loc := c.locality.Locate(ctx)
		md := map[string]string{}
		for _, k := range locationMetadata {
			if v := loc.Metadata[k]; v != "" {
				md[k] = v
			}
		}
		loc.Metadata = md
		loc.CloudProvider = normaliseProvider(loc.CloudProvider)
		if loc.ServerIP == "" {
			loc.ServerIP = "0.0.0.0"
		}
		if loc.Region == "" {
			loc.Region = "unknown-country"
		}
		return loc
	}
	region := c.cfg.Agent.Region
	if region == "" {
		region = "unknown-country"
	}
	return Location{ServerIP: c.serverIP(), Region: region, CloudProvider: normaliseProvider(c.cfg.Agent.CloudProvider)}
}

// joinServerURL is worker_join.server_url (§4.2): the Locality's (the
// node's InternalIP, or agent.join_server_url), else the outbound
// interface's address, never a public lookup.
func (c *Client) joinServerURL(ctx context.Context) string {
	if c.locality != nil {
		if u := c.locality.JoinServerURL(ctx); u != "" {
			return u
		}
	}
	return "https://" + net.JoinHostPort(c.serverIP(), "6443")
}

// Locality says where this VM is: register's server_ip, region,
// cloud_provider and optional metadata (§4.1), and worker_join's server_url
// (§4.2). The daemon wires internal/locality; without one the link uses
// the outbound interface's address and the configured region and provider.
type Locality interface {
	// Locate may take seconds (public-address lookups) and never fails.
	Locate(ctx context.Context) Location
	// JoinServerURL is the URL the cluster's other VMs join through, "" if unknown.
	JoinServerURL(ctx context.Context) string
}

// Location is Locality's answer for register.
type Location struct {
	ServerIP      string
	Region        string
	CloudProvider string
	// Metadata holds the optional keys of §4.1 (country_code, region_name,
	// country_name, network_org, network_asn, ip_intel_method); others are dropped.
	Metadata map[string]string
}
