package routesync

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	netlisters "k8s.io/client-go/listers/networking/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/pipeops/pipeops-vm-agent/internal/logging"
)

// byBackend indexes ingresses by the namespace/name of the Services they use.
const byBackend = "backend"

// caches are the Ingress and Service informers. Resync is off: a periodic
// resync would only replay unchanged objects (the reference re-registered
// every route on each one, §13.14); the full sync covers drift instead.
type caches struct {
	factory  informers.SharedInformerFactory
	ing, svc cache.SharedIndexInformer
	ingL     netlisters.IngressLister
	svcL     corelisters.ServiceLister
	cancel   context.CancelFunc
}

func newCaches(kc kubernetes.Interface, namespace string, s *Syncer) *caches {
	f := informers.NewSharedInformerFactoryWithOptions(kc, 0, informers.WithNamespace(namespace),
		informers.WithTransform(stripManagedFields))
	c := &caches{factory: f}
	ingInf := f.Networking().V1().Ingresses()
	svcInf := f.Core().V1().Services()
	c.ing, c.svc = ingInf.Informer(), svcInf.Informer()
	c.ingL, c.svcL = ingInf.Lister(), svcInf.Lister()
	_ = c.ing.AddIndexers(cache.Indexers{byBackend: func(obj any) ([]string, error) {
		if ing, ok := obj.(*networkingv1.Ingress); ok {
			return backendServices(ing), nil
		}
		return nil, nil
	}})
	_, _ = c.ing.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    s.onIngress,
		UpdateFunc: func(old, cur any) { s.onIngressUpdate(old, cur) },
		DeleteFunc: s.onIngress,
	})
	_, _ = c.svc.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    s.onService,
		UpdateFunc: func(_, cur any) { s.onService(cur) },
		DeleteFunc: s.onService,
	})
	return c
}

// stripManagedFields drops server-side-apply bookkeeping before caching: it
// is often the largest part of an object and routesync never reads it.
func stripManagedFields(obj any) (any, error) {
	if a, err := meta.Accessor(obj); err == nil {
		a.SetManagedFields(nil)
	}
	return obj, nil
}

func (c *caches) start(ctx context.Context) {
	ctx, c.cancel = context.WithCancel(ctx)
	c.factory.Start(ctx.Done())
}

func (c *caches) stop() {
	c.cancel()
	c.factory.Shutdown()
}

// wait blocks until both caches are filled; false if ctx ended first.
func (c *caches) wait(ctx context.Context) bool {
	return cache.WaitForCacheSync(ctx.Done(), c.ing.HasSynced, c.svc.HasSynced)
}

func (c *caches) ingressCount() int { return len(c.ing.GetStore().ListKeys()) }

func (c *caches) get(namespace, name string) (*corev1.Service, bool) {
	s, err := c.svcL.Services(namespace).Get(name)
	return s, err == nil
}

func (c *caches) list(namespace string, sel labels.Selector) []*corev1.Service {
	out, _ := c.svcL.Services(namespace).List(sel)
	return out
}

// onIngress queues an added or deleted ingress. A delete may carry a
// DeletedFinalStateUnknown tombstone (a delete missed during a watch gap);
// its key still names the ingress, so the worker unregisters its routes.
func (s *Syncer) onIngress(obj any) {
	key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	if err != nil {
		s.log.Warn("ingress event without a key", logging.KeyErr, err)
		return
	}
	s.q.Add(key)
}

// onIngressUpdate skips updates that cannot change routes: same
// resourceVersion (a replay), or only status changed (a new load-balancer
// address on the ingress, which routes do not carry).
func (s *Syncer) onIngressUpdate(old, cur any) {
	o, ok1 := old.(*networkingv1.Ingress)
	n, ok2 := cur.(*networkingv1.Ingress)
	if ok1 && ok2 && (o.ResourceVersion == n.ResourceVersion || o.Generation == n.Generation &&
		labelsAnnotationsEqual(o, n)) {
		return
	}
	s.onIngress(cur)
}

func labelsAnnotationsEqual(a, b *networkingv1.Ingress) bool {
	return labels.Equals(a.Labels, b.Labels) && labels.Equals(a.Annotations, b.Annotations)
}

// onService re-runs detection and re-evaluates the ingresses that use the Service.
func (s *Syncer) onService(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	svc, ok := obj.(*corev1.Service)
	if !ok {
		return
	}
	s.q.Add(detectKey)
	if s.cache == nil {
		return
	}
	ings, _ := s.cache.ing.GetIndexer().ByIndex(byBackend, svc.Namespace+"/"+svc.Name)
	for _, o := range ings {
		if key, err := cache.MetaNamespaceKeyFunc(o); err == nil {
			s.q.Add(key)
		}
	}
}
