package daemon

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pipeops/pipeops-vm-agent/internal/controlplane"
	"github.com/pipeops/pipeops-vm-agent/internal/hostinfo"
	"github.com/pipeops/pipeops-vm-agent/internal/locality"
	"github.com/pipeops/pipeops-vm-agent/internal/logging"
	"github.com/pipeops/pipeops-vm-agent/internal/tlsconfig"
)

// newLocality builds where-this-VM-is for registration (protocol.md §4.1):
// the public-address lookups and the control plane's ip-intel go through
// the link's proxy settings (HTTPS_PROXY, NO_PROXY); ip-intel also uses the
// link's TLS settings, since it is the control plane. The node facts come
// from the ServiceAccount's view of the cluster.
func (d *Daemon) newLocality() (controlplane.Locality, error) {
	tc, err := tlsconfig.New(d.cfg.PipeOps.TLS.Options()) // the link's trust and pins: ip-intel is the control plane

	if err != nil {
		return nil, err
	}
	client := func(t *http.Transport) *http.Client {
		t.Proxy, t.TLSHandshakeTimeout, t.ResponseHeaderTimeout = http.ProxyFromEnvironment, 5*time.Second, 5*time.Second
		t.MaxIdleConns, t.IdleConnTimeout = 2, 30*time.Second
		return &http.Client{Transport: t, Timeout: 10 * time.Second}
	}
	a := d.cfg.Agent
	services := a.PublicIPServices // nil: locality.DefaultLookupServices
	var localIP func() string      // nil: the interface toward 8.8.8.8 (§4.1)
	if privateControlPlane(d.cfg.PipeOps.APIURL) {
		// A control plane on loopback or a private network (development,
		// tests, on-premises) reaches this VM by its local address; asking
		// the internet for the public one would only leak and delay, and the
		// interface that matters is the one toward that control plane.
		if services == nil {
			services = []string{}
		}
		if u, err := url.Parse(d.cfg.PipeOps.APIURL); err == nil {
			port := u.Port()
			if port == "" {
				port = "443"
			}
			target := net.JoinHostPort(u.Hostname(), port)
			localIP = func() string { return hostinfo.OutboundIP(target) }
		}
	}
	l := locality.New(locality.Options{
		ServerIP: a.ServerIP, Region: a.Region, CloudProvider: a.CloudProvider, JoinServerURL: a.JoinServerURL,
		LookupServices: services,
		CloudMetadata:  a.CloudMetadata,
		LocalIP:        localIP,
		IntelURL:       locality.IntelURLFor(d.cfg.PipeOps.APIURL),
		Lookup:         client(&http.Transport{}),
		Intel:          client(&http.Transport{TLSClientConfig: tc}),
		Node:           d.localNode,
		State:          d.state,
		Log:            d.log.With(logging.KeyComponent, "locality"),
	})
	return localityAdapter{l}, nil
}

// localNode reads this VM's Node: the one named like the host, else the
// only or the first control-plane node.
func (d *Daemon) localNode(ctx context.Context) (locality.Node, error) {
	cs := d.kubePart.mgr.Clientset()
	if cs == nil {
		return locality.Node{}, errors.New("no Kubernetes access yet")
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	list, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{ResourceVersion: "0"}) // from the apiserver's cache
	if err != nil {
		return locality.Node{}, err
	}
	nodes := make([]locality.Node, 0, len(list.Items))
	for _, n := range list.Items {
		ln := locality.Node{Name: n.Name, ProviderID: n.Spec.ProviderID, Labels: n.Labels}
		for _, a := range n.Status.Addresses {
			if a.Type == corev1.NodeInternalIP && (ln.InternalIP == "" || isIPv4(a.Address)) {
				ln.InternalIP = a.Address
			}
		}
		nodes = append(nodes, ln)
	}
	n, ok := locality.PickNode(nodes, hostinfo.Hostname())
	if !ok {
		return locality.Node{}, errors.New("the cluster has no nodes")
	}
	return n, nil
}

// privateControlPlane says whether api_url names localhost or a loopback,
// private or link-local address literally (names are not resolved).
func privateControlPlane(apiURL string) bool {
	u, err := url.Parse(apiURL)
	if err != nil {
		return false
	}
	h := u.Hostname()
	if h == "localhost" || strings.HasSuffix(h, ".localhost") {
		return true
	}
	ip, err := netip.ParseAddr(h)
	return err == nil && (ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast())
}

func isIPv4(s string) bool { return s != "" && !strings.Contains(s, ":") }

// localityAdapter is internal/locality as the link's Locality.
type localityAdapter struct{ l *locality.Locator }

func (a localityAdapter) Locate(ctx context.Context) controlplane.Location {
	loc := a.l.Locate(ctx)
	return controlplane.Location{ServerIP: loc.ServerIP, Region: loc.Region, CloudProvider: loc.CloudProvider, Metadata: loc.Metadata}
}

func (a localityAdapter) JoinServerURL(ctx context.Context) string { return a.l.JoinServerURL(ctx) }
