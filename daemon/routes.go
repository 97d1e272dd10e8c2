package daemon

import (
	"github.com/pipeops/pipeops-vm-agent/internal/kubeproxy"
	"github.com/pipeops/pipeops-vm-agent/internal/routesync"
)

// ingressRoutes is the route syncer as the proxy's ingress route cache
// (protocol.md §6.3 rules 1 and 4).
type ingressRoutes struct{ s *routesync.Syncer }

var _ kubeproxy.IngressRoutes = ingressRoutes{}

func (c ingressRoutes) RouteFor(host string) (kubeproxy.ServiceRef, bool) {
	ns, name, port, ok := c.s.Lookup(host)
	return kubeproxy.ServiceRef{Namespace: ns, Name: name, Port: port}, ok
}

func (c ingressRoutes) Controller() (kubeproxy.ServiceRef, bool) {
	ns, name, port, ok := c.s.Controller()
	return kubeproxy.ServiceRef{Namespace: ns, Name: name, Port: port}, ok
}
