package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pipeops/pipeops-vm-agent/internal/config"
	"github.com/pipeops/pipeops-vm-agent/internal/controlplane"
	"github.com/pipeops/pipeops-vm-agent/internal/hostinfo"
	"github.com/pipeops/pipeops-vm-agent/internal/kube"
	"github.com/pipeops/pipeops-vm-agent/internal/locality"
	"github.com/pipeops/pipeops-vm-agent/internal/state"
)

// newLocality builds where-this-VM-is for registration (protocol.md §4.1):
// the public-address lookups and the control plane's ip-intel go through
// the link's proxy settings (HTTPS_PROXY, NO_PROXY); ip-intel also uses
// linkTLS, the link's TLS settings, since it is the control plane. The node
// facts come from the ServiceAccount's view of the cluster.
func newLocality(cfg *config.Config, linkTLS *tls.Config, st *state.Store, km *kube.Manager, log *slog.Logger) controlplane.Locality {
	client := func(t *http.Transport) *http.Client {
		t.Proxy, t.TLSHandshakeTimeout, t.ResponseHeaderTimeout = http.ProxyFromEnvironment, 5*time.Second, 5*time.Second
		t.MaxIdleConns, t.IdleConnTimeout = 2, 30*time.Second
		return &http.Client{Transport: t, Timeout: 10 * time.Second}
	}
	a := cfg.Agent
	services := a.PublicIPServices // nil: locality.DefaultLookupServices
	var localIP func() string      // nil: the interface toward 8.8.8.8 (§4.1)
	if privateControlPlane(cfg.PipeOps.APIURL) {
		// A control plane on loopback or a private network (development,
		// tests, on-premises) reaches this VM by its local address; asking
		// the internet for the public one would only leak and delay, and the
		// interface that matters is the one toward that control plane.
		if services == nil {
			services = []string{}
		}
		if u, err := url.Parse(cfg.PipeOps.APIURL); err == nil {
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
		IntelURL:       locality.IntelURLFor(cfg.PipeOps.APIURL),
		Lookup:         client(&http.Transport{}),
		Intel:          client(&http.Transport{TLSClientConfig: linkTLS.Clone()}), // a transport may edit its own (NextProtos)
		Node:           func(ctx context.Context) (locality.Node, error) { return localNode(ctx, km) },
		State:          st,
		Log:            log,
	})
	return localityAdapter{l}
}

// localNode reads this VM's Node: the one named like the host, else the
// only or the first control-plane node.
func localNode(ctx context.Context, km *kube.Manager) (locality.Node, error) {
	cs := km.Clientset()
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
