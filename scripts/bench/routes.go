package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/pipeops/pipeops-vm-agent/internal/devplane"
	"github.com/pipeops/pipeops-vm-agent/internal/routesync"
)

func init() { benches["routes"] = benchRoutes }

// benchRoutes: N managed Ingresses on a real API server; a fresh syncer
// starts against an in-process devplane. It prints the time until the
// registry holds every route, the Kubernetes API requests the syncer made
// (counted by a wrapping RoundTripper) and the REST calls, for a small and a
// large N in the same run. Lists and watches must not grow with N; only
// list pages may (client-go pages at 500 objects).
func benchRoutes(args []string) error {
	fs := flag.NewFlagSet("routes", flag.ContinueOnError)
	n := fs.Int("n", 2000, "managed Ingresses in the large run")
	base := fs.Int("base", 200, "managed Ingresses in the baseline run")
	kubeconfig := fs.String("kubeconfig", os.Getenv("PIPEOPS_TEST_KUBECONFIG"), "admin kubeconfig of a running cluster (default: start one with scripts/k8s/cluster.sh)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *kubeconfig == "" {
		dir, err := os.MkdirTemp("", "pipeops-bench-routes-")
		if err != nil {
			return err
		}
		fmt.Println("starting a test cluster in", dir)
		stop, err := startCluster(dir, false)
		if err != nil {
			return err
		}
		defer func() {
			stop()
			os.RemoveAll(dir)
		}()
		*kubeconfig = filepath.Join(dir, "admin.kubeconfig")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		return fmt.Errorf("load kubeconfig: %w", err)
	}
	cfg.QPS, cfg.Burst = 500, 1000 // for creating the fixtures; the syncer gets its own config

	var results []routeResult
	for _, count := range []int{*base, *n} {
		r, err := runRoutes(cfg, count)
		if err != nil {
			return err
		}
		results = append(results, r)
	}
	fmt.Printf("\n%-8s %10s %6s %8s %7s %6s %6s %9s %9s\n", "ingress", "converge", "lists", "list-pgs", "watches", "other", "sync", "register", "unregist")
	for _, r := range results {
		fmt.Printf("%-8d %10s %6d %8d %7d %6d %6d %9d %9d\n", r.n, r.converge.Round(time.Millisecond), r.lists, r.listPages,
			r.watches, r.other, r.calls[routesync.OpSync], r.calls[routesync.OpRegister], r.calls[routesync.OpUnregister])
	}
	a, b := results[0], results[1]
	fmt.Printf("\nratios %d/%d ingresses: converge ×%.2f, lists ×%.2f, watches ×%.2f, REST calls ×%.2f; per ingress %.3f ms vs %.3f ms\n",
		b.n, a.n, ratio(float64(b.converge), float64(a.converge)), ratio(float64(b.lists), float64(a.lists)),
		ratio(float64(b.watches), float64(a.watches)), ratio(float64(b.restCalls()), float64(a.restCalls())),
		float64(a.converge.Microseconds())/1000/float64(a.n), float64(b.converge.Microseconds())/1000/float64(b.n))
	if a.lists == 0 && b.lists == 0 {
		fmt.Println("(no LIST requests: client-go's WatchListClient streams the initial state over the watch)")
	}
	fmt.Printf("one update after convergence: %s (base) vs %s (large); REST calls per update: %d vs %d\n",
		a.update.Round(time.Millisecond), b.update.Round(time.Millisecond), a.updateCalls, b.updateCalls)
	return nil
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

type routeResult struct {
	n                                int
	converge, update                 time.Duration
	lists, listPages, watches, other int64
	calls                            map[string]int
	updateCalls                      int
}

func (r routeResult) restCalls() int {
	return r.calls[routesync.OpSync] + r.calls[routesync.OpRegister] + r.calls[routesync.OpUnregister]
}

// apiCounter counts the syncer's Kubernetes API requests by kind.
type apiCounter struct {
	rt                               http.RoundTripper
	lists, listPages, watches, other atomic.Int64
}

func (c *apiCounter) RoundTrip(req *http.Request) (*http.Response, error) {
	q := req.URL.Query()
	switch {
	case req.Method == http.MethodGet && q.Get("watch") == "true":
		c.watches.Add(1)
	case req.Method == http.MethodGet && q.Get("continue") != "":
		c.listPages.Add(1)
	case req.Method == http.MethodGet && (q.Has("limit") || q.Has("resourceVersion")):
		c.lists.Add(1)
		c.listPages.Add(1)
	default:
		c.other.Add(1)
	}
	return c.rt.RoundTrip(req)
}

func runRoutes(admin *rest.Config, n int) (routeResult, error) {
	ctx := context.Background()
	cs, err := kubernetes.NewForConfig(admin)
	if err != nil {
		return routeResult{}, err
	}
	ns, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "bench-routes-"}}, metav1.CreateOptions{})
	if err != nil {
		return routeResult{}, fmt.Errorf("create namespace: %w", err)
	}
	defer func() {
		_ = cs.NetworkingV1().Ingresses(ns.Name).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
		_ = cs.CoreV1().Namespaces().Delete(ctx, ns.Name, metav1.DeleteOptions{})
	}()
	for _, s := range []*corev1.Service{
		{ObjectMeta: metav1.ObjectMeta{Name: "traefik"}, Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "web", Port: 80}}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "app"}, Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 8080}}}},
	} {
		if _, err := cs.CoreV1().Services(ns.Name).Create(ctx, s, metav1.CreateOptions{}); err != nil {
			return routeResult{}, fmt.Errorf("create Service: %w", err)
		}
	}
	t0 := time.Now()
	if err := createIngresses(ctx, cs, ns.Name, n); err != nil {
		return routeResult{}, err
	}
	fmt.Printf("created %d managed Ingresses in %s in %v\n", n, ns.Name, time.Since(t0).Round(time.Millisecond))

	dp := devplane.New(devplane.Config{Tokens: []string{"bench"}})
	srv := httptest.NewServer(dp.Handler())
	defer srv.Close()
	counter := &apiCounter{}
	scfg := rest.CopyConfig(admin)
	scfg.QPS, scfg.Burst = 0, 0 // client-go defaults, as the agent uses
	scfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { counter.rt = rt; return counter }
	scs, err := kubernetes.NewForConfig(scfg)
	if err != nil {
		return routeResult{}, err
	}
	const clusterID = "bench-cluster"
	ctrl := []types.NamespacedName{{Namespace: ns.Name, Name: "traefik"}}
	s, err := routesync.New(routesync.Options{
		Kube: routesync.StaticKube(scs), APIURL: srv.URL, Token: func() string { return "bench" },
		ClusterID: func() string { return clusterID }, Namespace: ns.Name,
		ControllerCandidates: ctrl, RoutingCandidates: ctrl, LabelNamespaces: []string{},
	})
	if err != nil {
		return routeResult{}, err
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- s.Run(runCtx) }()
	defer func() { cancel(); <-done }()
	if err := waitRouteCount(dp, clusterID, n, 5*time.Minute); err != nil {
		return routeResult{}, err
	}
	res := routeResult{n: n, converge: time.Since(start)}
	res.lists, res.listPages, res.watches, res.other = counter.lists.Load(), counter.listPages.Load(), counter.watches.Load(), counter.other.Load()
	res.calls = dp.RouteCalls()

	// One change after convergence: one register call, no relist.
	before := dp.RouteCalls()
	ing, err := cs.NetworkingV1().Ingresses(ns.Name).Get(ctx, "ing-0", metav1.GetOptions{})
	if err != nil {
		return routeResult{}, err
	}
	ing.Spec.Rules[0].Host = "moved-0.bench.example.com"
	t1 := time.Now()
	if _, err := cs.NetworkingV1().Ingresses(ns.Name).Update(ctx, ing, metav1.UpdateOptions{}); err != nil {
		return routeResult{}, err
	}
	for {
		if _, _, _, ok := s.Lookup("moved-0.bench.example.com"); ok && hasRoute(dp, clusterID, "moved-0.bench.example.com") {
			break
		}
		if time.Since(t1) > time.Minute {
			return routeResult{}, fmt.Errorf("the update did not reach the registry within a minute")
		}
		time.Sleep(5 * time.Millisecond)
	}
	res.update = time.Since(t1)
	after := dp.RouteCalls()
	for op, v := range after {
		res.updateCalls += v - before[op]
	}
	return res, nil
}

func createIngresses(ctx context.Context, cs kubernetes.Interface, ns string, n int) error {
	var wg sync.WaitGroup
	var firstErr atomic.Value
	next := atomic.Int64{}
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if _, err := cs.NetworkingV1().Ingresses(ns).Create(ctx, benchIngress(i), metav1.CreateOptions{}); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err, ok := firstErr.Load().(error); ok {
		return fmt.Errorf("create ingresses: %w", err)
	}
	return nil
}

func benchIngress(i int) *networkingv1.Ingress {
	prefix := networkingv1.PathTypePrefix
	return &networkingv1.Ingress{
		ObjectMeta: metav1.ObjectMeta{Name: "ing-" + strconv.Itoa(i), Labels: map[string]string{routesync.LabelManaged: "true"},
			Annotations: map[string]string{routesync.AnnotationDeploymentID: "dep-" + strconv.Itoa(i)}},
		Spec: networkingv1.IngressSpec{Rules: []networkingv1.IngressRule{{
			Host: "app-" + strconv.Itoa(i) + ".bench.example.com",
			IngressRuleValue: networkingv1.IngressRuleValue{HTTP: &networkingv1.HTTPIngressRuleValue{Paths: []networkingv1.HTTPIngressPath{{
				Path: "/", PathType: &prefix, Backend: networkingv1.IngressBackend{Service: &networkingv1.IngressServiceBackend{
					Name: "app", Port: networkingv1.ServiceBackendPort{Name: "http"}}}}}}},
		}}},
	}
}

func waitRouteCount(dp *devplane.Server, clusterID string, n int, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		if c, _ := dp.RouteCluster(clusterID); len(c.Routes) == n {
			return nil
		}
		if time.Now().After(deadline) {
			c, _ := dp.RouteCluster(clusterID)
			return fmt.Errorf("registry holds %d of %d routes after %v (calls %v)", len(c.Routes), n, within, dp.RouteCalls())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func hasRoute(dp *devplane.Server, clusterID, host string) bool {
	for _, r := range dp.Routes(clusterID) {
		if r.Hostname == host {
			return true
		}
	}
	return false
}
