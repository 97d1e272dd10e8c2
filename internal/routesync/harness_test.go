package routesync

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/pipeops/pipeops-vm-agent/internal/devplane"
	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

func TestMain(m *testing.M) { kubetest.Main(m) }

const (
	testToken   = "route-test-token"
	testCluster = "7c0b2a1e-0000-4000-8000-000000000001"
)

// controlPlane is an in-process devplane on a fixed loopback address that a
// test can stop (connection refused, as in an outage) and start again.
type controlPlane struct {
	dp   *devplane.Server
	addr string

	mu  sync.Mutex
	srv *http.Server
}

func startControlPlane(t *testing.T) *controlPlane {
	t.Helper()
	c := &controlPlane{dp: devplane.New(devplane.Config{Tokens: []string{testToken}})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c.addr = ln.Addr().String()
	c.serve(ln)
	t.Cleanup(c.stop)
	return c
}

func (c *controlPlane) url() string { return "http://" + c.addr }

func (c *controlPlane) serve(ln net.Listener) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.srv = &http.Server{Handler: c.dp.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go func(s *http.Server) { _ = s.Serve(ln) }(c.srv)
}

// stop closes the listener and every connection.
func (c *controlPlane) stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.srv != nil {
		_ = c.srv.Close()
		c.srv = nil
	}
}

// restart listens on the same address again.
func (c *controlPlane) restart(t *testing.T) {
	t.Helper()
	var ln net.Listener
	var err error
	testbin.Eventually(t, 10*time.Second, "listening again on "+c.addr,
		func() bool { ln, err = net.Listen("tcp", c.addr); return err == nil },
		func() string { return err.Error() })
	c.serve(ln)
}

// routeSet renders the registry as sorted "host/path" strings.
func (c *controlPlane) routeSet() []string {
	out := []string{}
	for _, r := range c.dp.Routes(testCluster) {
		out = append(out, r.Hostname+r.Path)
	}
	return out
}

// waitRoutes polls the registry until it holds exactly want.
func (c *controlPlane) waitRoutes(t *testing.T, within time.Duration, want ...string) time.Duration {
	t.Helper()
	slices.Sort(want)
	if want == nil {
		want = []string{}
	}
	start := time.Now()
	var got []string
	testbin.Eventually(t, within, fmt.Sprintf("the registry to hold %v", want),
		func() bool { got = c.routeSet(); return slices.Equal(got, want) },
		func() string { return fmt.Sprintf("got %v (calls %v)", got, c.dp.RouteCalls()) })
	return time.Since(start)
}

// waitFor polls cond until it holds.
func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	testbin.Eventually(t, within, what, cond)
}

// testOptions scope a syncer to the test's namespace: its controller is
// <ns>/traefik, found by the same detection code with a one-entry list.
func testOptions(kc kubernetes.Interface, ns string, cp *controlPlane) Options {
	ctrl := []types.NamespacedName{{Namespace: ns, Name: "traefik"}}
	return Options{
		Kube: StaticKube(kc), APIURL: cp.url(), Token: func() string { return testToken },
		ClusterID: func() string { return testCluster }, Namespace: ns,
		ControllerCandidates: ctrl, RoutingCandidates: ctrl, LabelNamespaces: []string{},
		DetectTimeout: 30 * time.Second,
	}
}

// running is a syncer started in the background; stop ends it and waits.
type running struct {
	*Syncer
	cancel context.CancelFunc
	done   chan error
}

func startSyncer(t *testing.T, opt Options) *running {
	t.Helper()
	s, err := New(opt)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{Syncer: s, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- r.Run(ctx) }()
	t.Cleanup(r.stop)
	return r
}

func (r *running) stop() {
	r.cancel()
	select {
	case err := <-r.done:
		if err != nil {
			panic("Run returned an error: " + err.Error())
		}
		r.done <- nil // later stop calls return at once
	case <-time.After(30 * time.Second):
		panic("the syncer did not stop within 30s")
	}
}

// fixture creates the controller Service and the application backend.
func fixture(t *testing.T, env *kubetest.Env, ctrlType corev1.ServiceType) {
	t.Helper()
	mk := func(name string, typ corev1.ServiceType, ports ...corev1.ServicePort) {
		s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: env.Namespace},
			Spec: corev1.ServiceSpec{Type: typ, Ports: ports, Selector: map[string]string{"app": name}}}
		if _, err := env.Client.CoreV1().Services(env.Namespace).Create(context.Background(), s, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create Service %s: %v", name, err)
		}
	}
	mk("traefik", ctrlType, corev1.ServicePort{Name: "web", Port: 80}, corev1.ServicePort{Name: "websecure", Port: 443})
	mk("app", corev1.ServiceTypeClusterIP, corev1.ServicePort{Name: "http", Port: 8080})
}

// ingressSpec is a compact description of a test ingress.
type ingressSpec struct {
	name    string
	managed bool
	host    string
	paths   []string
}

func (s ingressSpec) object(ns string) *networkingv1.Ingress {
	ing := &networkingv1.Ingress{ObjectMeta: metav1.ObjectMeta{Name: s.name, Namespace: ns}}
	if s.managed {
		ing.Labels = map[string]string{LabelManaged: "true"}
	}
	http := &networkingv1.HTTPIngressRuleValue{}
	for _, p := range s.paths {
		http.Paths = append(http.Paths, networkingv1.HTTPIngressPath{Path: p, PathType: ptr(networkingv1.PathTypePrefix),
			Backend: networkingv1.IngressBackend{Service: &networkingv1.IngressServiceBackend{Name: "app",
				Port: networkingv1.ServiceBackendPort{Name: "http"}}}})
	}
	ing.Spec.Rules = []networkingv1.IngressRule{{Host: s.host, IngressRuleValue: networkingv1.IngressRuleValue{HTTP: http}}}
	return ing
}

func ptr[T any](v T) *T { return &v }

func applyIngress(t *testing.T, env *kubetest.Env, s ingressSpec) {
	t.Helper()
	api := env.Client.NetworkingV1().Ingresses(env.Namespace)
	ctx := context.Background()
	want := s.object(env.Namespace)
	cur, err := api.Get(ctx, s.name, metav1.GetOptions{})
	if err != nil {
		if _, err := api.Create(ctx, want, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create ingress %s: %v", s.name, err)
		}
		return
	}
	cur.Labels, cur.Spec = want.Labels, want.Spec
	if _, err := api.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("update ingress %s: %v", s.name, err)
	}
}

func deleteIngress(t *testing.T, env *kubetest.Env, name string) {
	t.Helper()
	err := env.Client.NetworkingV1().Ingresses(env.Namespace).Delete(context.Background(), name, metav1.DeleteOptions{})
	if err != nil {
		t.Fatalf("delete ingress %s: %v", name, err)
	}
}
