package kube

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/pipeops/pipeops-vm-agent/internal/logging"
)

// binder grants WorkloadRoleRules in every namespace that is not protected,
// with the admin identity, as namespaces appear (a watch), and takes the
// grant away from namespaces that became protected. ClusterRole rules are
// cluster-wide and RBAC has no deny, so this is how "write anywhere but
// kube-system" is expressed (issue 13).
type binder struct {
	admin     kubernetes.Interface
	sa        func() kubernetes.Interface // the ServiceAccount's clientset, for the access check
	names     Names
	protected map[string]bool
	log       *slog.Logger
	queue     workqueue.TypedRateLimitingInterface[string]
}

func newBinder(admin kubernetes.Interface, sa func() kubernetes.Interface, n Names, protected map[string]bool, log *slog.Logger) *binder {
	return &binder{admin: admin, sa: sa, names: n.withDefaults(), protected: protected, log: log,
		queue: workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())}
}

// run watches namespaces until ctx ends. The informer's 10-minute resync
// repairs a RoleBinding someone deleted.
func (b *binder) run(ctx context.Context) {
	f := informers.NewSharedInformerFactoryWithOptions(b.admin, 10*time.Minute)
	inf := f.Core().V1().Namespaces().Informer()
	enqueue := func(obj any) {
		if ns, ok := obj.(*corev1.Namespace); ok && ns.Status.Phase != corev1.NamespaceTerminating {
			b.queue.Add(ns.Name)
		}
	}
	_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: enqueue, UpdateFunc: func(_, o any) { enqueue(o) }})
	go func() {
		<-ctx.Done()
		b.queue.ShutDown()
	}()
	f.Start(ctx.Done())
	b.unbindProtected(ctx)
	for b.next(ctx) {
	}
	f.Shutdown()
}

func (b *binder) next(ctx context.Context) bool {
	ns, quit := b.queue.Get()
	if quit {
		return false
	}
	defer b.queue.Done(ns)
	if b.protected[ns] {
		b.queue.Forget(ns)
		return true
	}
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	changed, err := BindNamespace(cctx, b.admin, b.names, ns, b.protected)
	cancel()
	switch {
	case apierrors.IsNotFound(err) || apierrors.IsForbidden(err) && strings.Contains(err.Error(), "being terminated"):
		b.queue.Forget(ns) // the namespace went away
	case err != nil:
		b.log.Warn("cannot grant the control plane access to a namespace; retrying", logging.KeyNamespace, ns, logging.KeyErr, err)
		b.queue.AddRateLimited(ns)
	default:
		b.queue.Forget(ns)
		if changed {
			b.log.Info("granted the control plane's workload role in a namespace", logging.KeyNamespace, ns, "rolebinding", b.names.WorkloadRole())
		}
	}
	return true
}

// unbindProtected removes the workload RoleBinding from namespaces that are
// protected now (kubernetes.protected_namespaces grew, monitoring turned on).
func (b *binder) unbindProtected(ctx context.Context) {
	list, err := b.admin.RbacV1().RoleBindings("").List(ctx, metav1.ListOptions{LabelSelector: agentLabel + "=" + b.names.Namespace})
	if err != nil {
		b.log.Warn("cannot list the agent's rolebindings", logging.KeyErr, err)
		return
	}
	for _, rb := range list.Items {
		if rb.Name != b.names.WorkloadRole() || !b.protected[rb.Namespace] {
			continue
		}
		if err := b.admin.RbacV1().RoleBindings(rb.Namespace).Delete(ctx, rb.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			b.log.Warn("cannot remove the workload role from a protected namespace", logging.KeyNamespace, rb.Namespace, logging.KeyErr, err)
			continue
		}
		b.log.Info("removed the control plane's workload role from a protected namespace", logging.KeyNamespace, rb.Namespace)
	}
}

// bindNow grants the workload role in ns at once and waits until the API
// server's authorizer lets the ServiceAccount create Deployments there, so
// the control plane's next request after creating a namespace is allowed.
func (b *binder) bindNow(ctx context.Context, ns string) error {
	if b.protected[ns] {
		return nil
	}
	if _, err := BindNamespace(ctx, b.admin, b.names, ns, b.protected); err != nil {
		return err
	}
	sa := b.sa()
	if sa == nil {
		return nil
	}
	review := &authzv1.SelfSubjectAccessReview{Spec: authzv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authzv1.ResourceAttributes{
		Namespace: ns, Group: "apps", Resource: "deployments", Verb: "create"}}}
	for delay := 5 * time.Millisecond; ; delay *= 2 {
		r, err := sa.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, review, metav1.CreateOptions{})
		if err == nil && r.Status.Allowed {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the workload role in %s did not take effect: %w", ns, ctx.Err())
		case <-time.After(min(delay, 200*time.Millisecond)):
		}
	}
}

// namespaceCreateHook wraps the proxy identity's transport: when a request
// creates a namespace (POST /api/v1/namespaces answered 201), the workload
// role is granted there before the answer goes back to the control plane.
// Without it the control plane's next call (deploy into the new namespace)
// could race the watch and get 403.
type namespaceCreateHook struct {
	next http.RoundTripper
	bind func(ctx context.Context, ns string) error
	log  *slog.Logger
}

func (h *namespaceCreateHook) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := h.next.RoundTrip(req)
	if err != nil || req.Method != http.MethodPost || resp.StatusCode != http.StatusCreated ||
		!strings.HasSuffix(strings.TrimSuffix(req.URL.Path, "/"), "/api/v1/namespaces") {
		return resp, err
	}
	body, rerr := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(body))
	if rerr != nil {
		return resp, nil
	}
	name := createdNamespace(body, resp.Header.Get("Content-Encoding"))
	if name == "" {
		return resp, nil // unreadable: the watch grants it a moment later
	}
	ctx, cancel := context.WithTimeout(req.Context(), 5*time.Second)
	defer cancel()
	if err := h.bind(ctx, name); err != nil {
		h.log.Warn("namespace created through the proxy, but granting the workload role failed; the watch retries",
			logging.KeyNamespace, name, logging.KeyErr, err)
	}
	return resp, nil
}

// createdNamespace decodes the name from a namespace-create answer in any
// encoding the API server speaks (JSON, YAML, protobuf; gzip passes through
// the proxy untouched).
func createdNamespace(body []byte, encoding string) string {
	if strings.EqualFold(encoding, "gzip") {
		zr, err := gzip.NewReader(bytes.NewReader(body))
		if err != nil {
			return ""
		}
		if body, err = io.ReadAll(io.LimitReader(zr, 1<<20)); err != nil {
			return ""
		}
	}
	obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(body, nil, nil)
	if ns, ok := obj.(*corev1.Namespace); err == nil && ok {
		return ns.Name
	}
	return ""
}
