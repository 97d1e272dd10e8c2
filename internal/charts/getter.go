package charts

import (
	"sync"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// restGetter adapts a *rest.Config (the agent's admin identity, which comes
// from kubeconfig discovery rather than a kubeconfig Helm could read) to the
// genericclioptions.RESTClientGetter that Helm's action.Configuration wants.
// Each getter is bound to one namespace: Helm takes the namespace of the
// resources it creates from ToRawKubeConfigLoader().Namespace().
type restGetter struct {
	cfg       *rest.Config
	namespace string

	once   sync.Once
	disc   discovery.CachedDiscoveryInterface
	mapper meta.RESTMapper
	err    error
}

var _ genericclioptions.RESTClientGetter = (*restGetter)(nil)

func newRESTGetter(cfg *rest.Config, namespace string) *restGetter {
	c := rest.CopyConfig(cfg)
	// Helm lists and applies many objects at once; client-go's default 5 QPS
	// would make a large chart take minutes.
	if c.QPS == 0 {
		c.QPS, c.Burst = 50, 100
	}
	return &restGetter{cfg: c, namespace: namespace}
}

func (g *restGetter) init() {
	g.once.Do(func() {
		dc, err := discovery.NewDiscoveryClientForConfig(g.cfg)
		if err != nil {
			g.err = err
			return
		}
		g.disc = memory.NewMemCacheClient(dc)
		g.mapper = restmapper.NewShortcutExpander(restmapper.NewDeferredDiscoveryRESTMapper(g.disc), g.disc, nil)
	})
}

// ToRESTConfig returns a copy, so Helm's changes never leak into ours.
func (g *restGetter) ToRESTConfig() (*rest.Config, error) { return rest.CopyConfig(g.cfg), nil }

func (g *restGetter) ToDiscoveryClient() (discovery.CachedDiscoveryInterface, error) {
	g.init()
	return g.disc, g.err
}

func (g *restGetter) ToRESTMapper() (meta.RESTMapper, error) {
	g.init()
	return g.mapper, g.err
}

func (g *restGetter) ToRawKubeConfigLoader() clientcmd.ClientConfig { return clientConfig{g} }

// clientConfig is the minimal clientcmd.ClientConfig Helm needs: the REST
// config and the namespace. There is no kubeconfig file behind it.
type clientConfig struct{ g *restGetter }

func (c clientConfig) RawConfig() (clientcmdapi.Config, error) {
	// An empty but valid kubeconfig: Helm reads it only for context names.
	return *clientcmdapi.NewConfig(), nil
}

func (c clientConfig) ClientConfig() (*rest.Config, error) { return rest.CopyConfig(c.g.cfg), nil }

func (c clientConfig) Namespace() (string, bool, error) { return c.g.namespace, true, nil }

// ConfigAccess points at no file: nothing may fall back to $HOME/.kube/config.
func (c clientConfig) ConfigAccess() clientcmd.ConfigAccess {
	return &clientcmd.ClientConfigLoadingRules{}
}
