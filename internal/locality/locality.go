// Package locality works out where this VM is, for the control plane's
// register message (protocol.md §4.1) and heartbeat.worker_join (§4.2): the
// public address (server_ip), the country (region), the provider, and the
// address other VMs join the cluster through. Its sources, in order:
// configuration, the node's providerID and topology labels, the public-IP
// lookup services, and the control plane's ip-intel endpoint. It calls the
// clouds' instance metadata service only when the operator enables it
// (agent.cloud_metadata). It imports the standard library and the leaves
// hostinfo and state only; the daemon hands it the node facts and the
// HTTP clients (with the link's proxy settings).
package locality

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/hostinfo"
	"github.com/pipeops/pipeops-vm-agent/internal/logging"
	"github.com/pipeops/pipeops-vm-agent/internal/state"
)

// DefaultLookupServices answer a GET with the caller's public address as
// plain text (protocol.md §4.1), tried in this order.
var DefaultLookupServices = []string{"https://api.ipify.org", "https://ifconfig.me/ip", "https://icanhazip.com"}

// Defaults of Options.
const (
	DefaultLookupTimeout = 3 * time.Second
	DefaultIntelTimeout  = 4 * time.Second // protocol.md §4.1
	DefaultCacheTTL      = time.Hour
	nodeTTL              = 5 * time.Minute
	// UnknownRegion is register.region when nothing tells the country (§4.1).
	UnknownRegion = "unknown-country"
	// outboundProbe is the address of §4.1's UDP "dial" for the local
	// address; no packet is sent.
	outboundProbe = "8.8.8.8:53"
)

// Node is what the agent reads from its own Node object.
type Node struct {
	Name       string
	ProviderID string
	Labels     map[string]string
	// InternalIP is the node's InternalIP address ("" if it has none).
	InternalIP string
}

// Options configure a Locator.
type Options struct {
	// ServerIP, Region, CloudProvider and JoinServerURL are the operator's
	// overrides (agent.server_ip, agent.region, agent.cloud_provider,
	// agent.join_server_url); each wins over everything it replaces.
	ServerIP, Region, CloudProvider, JoinServerURL string
	// LookupServices are tried in order for the public address; nil means
	// DefaultLookupServices, empty means none (the local address is used).
	LookupServices []string
	// IntelURL is the control plane's ip-intel base; the address is
	// appended. "" disables the lookup. See IntelURLFor.
	IntelURL string
	// Lookup fetches from the lookup services; Intel from the control plane
	// (its TLS settings). Both use the link's proxy settings.
	Lookup, Intel *http.Client
	LookupTimeout time.Duration
	IntelTimeout  time.Duration
	// CacheTTL is how long a looked-up public address is reused (1 h).
	CacheTTL time.Duration
	// CloudMetadata allows asking the instance metadata service at
	// MetadataURL (default DefaultMetadataURL) for the provider and region
	// when the Node does not tell them. Off by default: the agent reaches
	// no link-local address unless the operator says so.
	CloudMetadata bool
	MetadataURL   string
	// Node reads this VM's Node; nil when there is no Kubernetes access.
	Node func(ctx context.Context) (Node, error)
	// State caches the public address across restarts; nil keeps it in memory.
	State *state.Store
	// LocalIP is the address of the outbound interface (tests replace it).
	LocalIP func() string
	Log     *slog.Logger
	Now     func() time.Time
}

// IntelURLFor is the ip-intel base of an api_url (§4.1):
// <api_url>/api/v1/public/ip-intel/.
func IntelURLFor(apiURL string) string {
	u, err := url.Parse(strings.TrimSpace(apiURL))
	if err != nil || u.Host == "" {
		return ""
	}
	switch u.Scheme {
	case "wss":
		u.Scheme = "https"
	case "ws":
		u.Scheme = "http"
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + "/api/v1/public/ip-intel/"
	u.RawPath, u.RawQuery, u.Fragment = "", "", ""
	return u.String()
}

// Location is register's server_ip, region, cloud_provider and the
// optional metadata keys of §4.1 (country_code, region_name, country_name,
// network_org, network_asn, ip_intel_method).
type Location struct {
	ServerIP      string
	Region        string
	CloudProvider string
	Metadata      map[string]string
}

// Locator answers where this VM is. Safe for concurrent use.
type Locator struct {
	o Options

	mu       sync.Mutex
	publicIP string // in-memory cache when there is no State
	publicAt time.Time
	intel    map[string]intelCache
	node     *Node
	nodeAt   time.Time
	cloud    *[2]string // provider and region from the metadata service, once asked
}

type intelCache struct {
	at   time.Time
	info *Intel
}

// New returns a Locator. It contacts nothing.
func New(o Options) *Locator {
	if o.LookupServices == nil {
		o.LookupServices = DefaultLookupServices
	}
	if o.LookupTimeout <= 0 {
		o.LookupTimeout = DefaultLookupTimeout
	}
	if o.IntelTimeout <= 0 {
		o.IntelTimeout = DefaultIntelTimeout
	}
	if o.CacheTTL <= 0 {
		o.CacheTTL = DefaultCacheTTL
	}
	if o.Lookup == nil {
		o.Lookup = &http.Client{Transport: &http.Transport{Proxy: http.ProxyFromEnvironment}}
	}
	if o.Intel == nil {
		o.Intel = o.Lookup
	}
	if o.LocalIP == nil {
		o.LocalIP = func() string { return hostinfo.OutboundIP(outboundProbe) }
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.MetadataURL == "" {
		o.MetadataURL = DefaultMetadataURL
	}
	return &Locator{o: o, intel: map[string]intelCache{}}
}

// Locate fills register's location fields. It never fails: every source
// that does not answer falls through to the next, down to 0.0.0.0,
// unknown-country and "agent".
func (l *Locator) Locate(ctx context.Context) Location {
	loc := Location{ServerIP: l.PublicIP(ctx), Region: UnknownRegion, Metadata: map[string]string{}}
	provider := ""
	if n, err := l.nodeInfo(ctx); err == nil {
		if r := nodeRegion(n.Labels); r != "" {
			loc.Region = r
		}
		provider = providerFromID(n.ProviderID)
	} else if !errors.Is(err, errNoNode) {
		l.o.Log.Debug("node facts unavailable for the registration", logging.KeyErr, err)
	}
	if provider == "" && l.o.CloudMetadata {
		if p, r := l.cloudFacts(ctx); p != "" {
			provider = p
			if loc.Region == UnknownRegion && r != "" {
				loc.Region = r
			}
		}
	}
	if in := l.intelFor(ctx, loc.ServerIP); in != nil {
		if in.CountryCode != "" {
			loc.Region = in.CountryCode
			loc.Metadata["country_code"] = in.CountryCode
		}
		for k, v := range map[string]string{"region_name": in.Region, "country_name": in.Country,
			"network_org": in.Org, "network_asn": in.ASN, "ip_intel_method": in.DetectionMethod} {
			if v != "" {
				loc.Metadata[k] = v
			}
		}
		if in.CloudProvider != "" {
			provider = in.CloudProvider
		}
	}
	if l.o.Region != "" {
		loc.Region = l.o.Region
	}
	if l.o.CloudProvider != "" {
		provider = l.o.CloudProvider
	}
	loc.CloudProvider = NormaliseProvider(provider)
	return loc
}

// JoinServerURL is heartbeat.worker_join.server_url: agent.join_server_url,
// else https://<the node's InternalIP>:6443 (the address the cluster's other
// VMs reach, not the public one), else the local outbound address.
func (l *Locator) JoinServerURL(ctx context.Context) string {
	if l.o.JoinServerURL != "" {
		return l.o.JoinServerURL
	}
	host := ""
	if n, err := l.nodeInfo(ctx); err == nil {
		host = n.InternalIP
	}
	if host == "" {
		host = l.o.LocalIP()
	}
	if host == "" {
		return ""
	}
	return "https://" + net.JoinHostPort(host, "6443")
}

var errNoNode = errors.New("no Kubernetes node source")

// cloudFacts asks the metadata service once per process; a VM does not
// change clouds.
func (l *Locator) cloudFacts(ctx context.Context) (provider, region string) {
	l.mu.Lock()
	c := l.cloud
	l.mu.Unlock()
	if c != nil {
		return c[0], c[1]
	}
	provider, region = l.cloudMetadata(ctx)
	if provider != "" {
		l.mu.Lock()
		l.cloud = &[2]string{provider, region}
		l.mu.Unlock()
	}
	return provider, region
}

// nodeInfo reads the Node at most every 5 minutes.
func (l *Locator) nodeInfo(ctx context.Context) (Node, error) {
	if l.o.Node == nil {
		return Node{}, errNoNode
	}
	l.mu.Lock()
	if l.node != nil && l.o.Now().Sub(l.nodeAt) < nodeTTL {
		n := *l.node
		l.mu.Unlock()
		return n, nil
	}
	l.mu.Unlock()
	n, err := l.o.Node(ctx)
	if err != nil {
		return Node{}, err
	}
	l.mu.Lock()
	l.node, l.nodeAt = &n, l.o.Now()
	l.mu.Unlock()
	return n, nil
}

// PickNode chooses this VM's Node among nodes: the one named like the
// host, else the only one, else the first control-plane node, else the
// first. ok is false when nodes is empty.
func PickNode(nodes []Node, hostname string) (Node, bool) {
	if len(nodes) == 0 {
		return Node{}, false
	}
	short, _, _ := strings.Cut(hostname, ".")
	for _, n := range nodes {
		if strings.EqualFold(n.Name, hostname) || strings.EqualFold(n.Name, short) {
			return n, true
		}
	}
	if len(nodes) == 1 {
		return nodes[0], true
	}
	for _, n := range nodes {
		_, cp := n.Labels["node-role.kubernetes.io/control-plane"]
		_, master := n.Labels["node-role.kubernetes.io/master"]
		if cp || master {
			return n, true
		}
	}
	return nodes[0], true
}

// nodeRegion is the well-known topology region label.
func nodeRegion(labels map[string]string) string {
	for _, k := range []string{"topology.kubernetes.io/region", "failure-domain.beta.kubernetes.io/region"} {
		if v := strings.TrimSpace(labels[k]); v != "" && len(v) <= 64 {
			return v
		}
	}
	return ""
}

// providerIDs maps a providerID scheme (set by a cloud controller manager)
// to the provider's name. k3s:// and kind:// say nothing about the host.
var providerIDs = map[string]string{
	"aws": "aws", "gce": "gcp", "azure": "azure", "digitalocean": "digitalocean", "hcloud": "hetzner",
	"linode": "linode", "vultr": "vultr", "equinixmetal": "equinix", "packet": "equinix", "openstack": "openstack",
	"oci": "oracle", "ibm": "ibm", "alicloud": "alibaba", "scaleway": "scaleway", "exoscale": "exoscale",
	"ovhcloud": "ovh", "upcloud": "upcloud", "civo": "civo", "vsphere": "vsphere", "proxmox": "proxmox",
}

func providerFromID(id string) string {
	scheme, _, ok := strings.Cut(id, "://")
	if !ok {
		return ""
	}
	return providerIDs[strings.ToLower(scheme)]
}

// NormaliseProvider applies §4.1: default "agent"; on-prem* and baremetal
// become bare-metal.
func NormaliseProvider(p string) string {
	p = strings.ToLower(strings.TrimSpace(p))
	switch {
	case p == "":
		return "agent"
	case strings.HasPrefix(p, "on-prem"), strings.HasPrefix(p, "onprem"), p == "baremetal":
		return "bare-metal"
	}
	return p
}
