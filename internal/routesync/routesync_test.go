package routesync

import (
	"context"
	"flag"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pipeops/pipeops-vm-agent/internal/devplane"
	"github.com/pipeops/pipeops-vm-agent/internal/health"
	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
)

// outage is how long the devplane stays down in the outage test. The issue
// asks for 30 s; -short uses 3 s, which still spans several failed
// attempts and the backoff growing toward its cap.
var outage = flag.Duration("routes.outage", 30*time.Second, "devplane outage in TestRoutesConvergeAfterTheControlPlaneWasDown")

// converge is how long the registry may take to follow a change.
const converge = 10 * time.Second

func TestManagedIngressesConvergeOnCreateUpdateAndDelete(t *testing.T) {
	env := kubetest.Cluster(t)
	cp := startControlPlane(t)
	fixture(t, env, corev1.ServiceTypeClusterIP)
	s := startSyncer(t, testOptions(env.Client, env.Namespace, cp))

	applyIngress(t, env, ingressSpec{name: "ignored", managed: false, host: "unmanaged.example.com", paths: []string{"/"}})
	waitForFirstSync(t, cp) // nothing managed yet: an empty list

	steps := []struct {
		name string
		do   func()
		want []string
	}{
		{"creating a managed ingress registers its route", func() {
			applyIngress(t, env, ingressSpec{name: "web", managed: true, host: "web.example.com", paths: []string{"/"}})
		}, []string{"web.example.com/"}},
		{"adding a path registers it", func() {
			applyIngress(t, env, ingressSpec{name: "web", managed: true, host: "web.example.com", paths: []string{"/", "/api"}})
		}, []string{"web.example.com/", "web.example.com/api"}},
		{"removing a path removes only that path", func() {
			applyIngress(t, env, ingressSpec{name: "web", managed: true, host: "web.example.com", paths: []string{"/api"}})
		}, []string{"web.example.com/api"}},
		{"changing the host moves the route", func() {
			applyIngress(t, env, ingressSpec{name: "web", managed: true, host: "shop.example.com", paths: []string{"/api"}})
		}, []string{"shop.example.com/api"}},
		{"a second managed ingress adds its route", func() {
			applyIngress(t, env, ingressSpec{name: "blog", managed: true, host: "blog.example.com", paths: []string{"/"}})
		}, []string{"blog.example.com/", "shop.example.com/api"}},
		{"dropping the managed label unregisters it", func() {
			applyIngress(t, env, ingressSpec{name: "blog", managed: false, host: "blog.example.com", paths: []string{"/"}})
		}, []string{"shop.example.com/api"}},
		{"deleting the ingress unregisters its routes", func() { deleteIngress(t, env, "web") }, []string{}},
	}
	for _, st := range steps {
		st.do()
		took := cp.waitRoutes(t, converge, st.want...)
		t.Logf("%s: converged in %v", st.name, took.Round(time.Millisecond))
		if got := s.RouteCount(); got != len(st.want) {
			t.Fatalf("%s: RouteCount() = %d; want %d (managed routes only)", st.name, got, len(st.want))
		}
	}
	if c, _ := cp.dp.RouteCluster(testCluster); c.Syncs != 1 {
		t.Fatalf("syncs = %d; incremental changes must not need a full sync", c.Syncs)
	}
}

func TestRoutesTargetTheControllerAndServeTheProxyLookup(t *testing.T) {
	env := kubetest.Cluster(t)
	cp := startControlPlane(t)
	fixture(t, env, corev1.ServiceTypeClusterIP)
	s := startSyncer(t, testOptions(env.Client, env.Namespace, cp))
	waitForFirstSync(t, cp)
	applyIngress(t, env, ingressSpec{name: "web", managed: true, host: "web.example.com", paths: []string{"/"}})
	cp.waitRoutes(t, converge, "web.example.com/")

	r := cp.dp.Routes(testCluster)[0]
	if r.Source != "register" {
		t.Fatalf("route came from %q; want a register call", r.Source)
	}
	want := protocol.RouteRegister{Hostname: "web.example.com", ClusterUUID: testCluster, Namespace: env.Namespace,
		ServiceName: "traefik", ServicePort: 80, IngressName: "web", Path: "/", PathType: "Prefix", RoutingMode: "tunnel",
		DeploymentName: "web"}
	if r.Annotations[LabelManaged] != "" || !reflect.DeepEqual(r.RouteRegister, want) {
		t.Fatalf("registered %+v;\nwant %+v", r.RouteRegister, want)
	}
	ns, svc, port, ok := s.Lookup("WEB.example.com:443")
	if !ok || ns != env.Namespace || svc != "traefik" || port != 80 {
		t.Fatalf("Lookup = %s %s %d %v; want %s traefik 80 true", ns, svc, port, ok, env.Namespace)
	}
	if _, _, _, ok := s.Lookup("other.example.com"); ok {
		t.Fatal("Lookup found a host no managed ingress has")
	}
	st := s.Status()
	if st.Count != 1 || st.RoutingMode != "tunnel" || st.LastSyncResult != "ok" || st.LastSync.IsZero() || st.IngressController == "" {
		t.Fatalf("Status() = %+v", st)
	}
}

func TestANewSyncerSendsAFullSyncThatRestoresLostRoutes(t *testing.T) {
	env := kubetest.Cluster(t)
	cp := startControlPlane(t)
	fixture(t, env, corev1.ServiceTypeClusterIP)
	applyIngress(t, env, ingressSpec{name: "web", managed: true, host: "web.example.com", paths: []string{"/"}})
	first := startSyncer(t, testOptions(env.Client, env.Namespace, cp))
	cp.waitRoutes(t, converge, "web.example.com/")
	first.stop()

	cp.dp.ResetRoutes() // the control plane lost its routes while the agent was down
	applyIngress(t, env, ingressSpec{name: "blog", managed: true, host: "blog.example.com", paths: []string{"/"}})
	startSyncer(t, testOptions(env.Client, env.Namespace, cp))
	cp.waitRoutes(t, converge, "blog.example.com/", "web.example.com/")
	calls := cp.dp.RouteCalls()
	if calls[OpSync] != 1 || calls[OpRegister] != 0 {
		t.Fatalf("calls = %v; want one full sync and no per-route registration after a restart", calls)
	}
}

func TestAFullSyncWithNoManagedIngressesClearsStaleRoutes(t *testing.T) {
	env := kubetest.Cluster(t)
	cp := startControlPlane(t)
	fixture(t, env, corev1.ServiceTypeClusterIP)
	stale := startSyncer(t, testOptions(env.Client, env.Namespace, cp))
	applyIngress(t, env, ingressSpec{name: "web", managed: true, host: "web.example.com", paths: []string{"/"}})
	cp.waitRoutes(t, converge, "web.example.com/")
	stale.stop()
	deleteIngress(t, env, "web") // deleted while no agent watched

	startSyncer(t, testOptions(env.Client, env.Namespace, cp))
	cp.waitRoutes(t, converge)
	if c, _ := cp.dp.RouteCluster(testCluster); c.Syncs != 2 {
		t.Fatalf("syncs = %d; want 2 (one per start, the second with an empty list)", c.Syncs)
	}
}

func TestRoutesConvergeWhenTheAPIAnswers503ThreeTimes(t *testing.T) {
	cases := []struct {
		name string
		op   string
	}{
		{"on the full sync at start", OpSync},
		{"on a registration", OpRegister},
		{"on an unregistration", OpUnregister},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			env := kubetest.Cluster(t)
			cp := startControlPlane(t)
			fixture(t, env, corev1.ServiceTypeClusterIP)
			if c.op == OpUnregister {
				applyIngress(t, env, ingressSpec{name: "web", managed: true, host: "web.example.com", paths: []string{"/"}})
			}
			fault := devplane.RouteFault{Status: 503, Count: 3, Ops: []string{c.op}}
			if c.op == OpSync {
				cp.dp.SetRouteFault(fault)
			}
			startSyncer(t, testOptions(env.Client, env.Namespace, cp))
			if c.op != OpSync {
				waitForFirstSync(t, cp)
				cp.dp.SetRouteFault(fault)
			}
			want := []string{"web.example.com/"}
			switch c.op {
			case OpUnregister:
				deleteIngress(t, env, "web")
				want = nil
			default:
				applyIngress(t, env, ingressSpec{name: "web", managed: true, host: "web.example.com", paths: []string{"/"}})
			}
			took := cp.waitRoutes(t, 3*converge, want...)
			if f := cp.dp.RouteRegistry().Fault; f.Count != 0 {
				t.Fatalf("the fault was not used up: %+v", f)
			}
			t.Logf("converged %v after the change; calls %v", took.Round(time.Millisecond), cp.dp.RouteCalls())
		})
	}
}

func TestRoutesConvergeAfterTheControlPlaneWasDown(t *testing.T) {
	d := *outage
	if testing.Short() {
		d = 3 * time.Second
	}
	env := kubetest.Cluster(t)
	cp := startControlPlane(t)
	fixture(t, env, corev1.ServiceTypeClusterIP)
	applyIngress(t, env, ingressSpec{name: "web", managed: true, host: "web.example.com", paths: []string{"/"}})
	s := startSyncer(t, testOptions(env.Client, env.Namespace, cp))
	cp.waitRoutes(t, converge, "web.example.com/")

	cp.stop()
	cp.dp.ResetRoutes() // a restarted control plane starts empty
	applyIngress(t, env, ingressSpec{name: "blog", managed: true, host: "blog.example.com", paths: []string{"/"}})
	deleteIngress(t, env, "web")
	waitFor(t, converge, "a failed call to be reported", func() bool { return s.Status().LastError != "" })
	time.Sleep(d) // the outage itself: nothing to poll for while the control plane is down
	cp.restart(t)
	// The retry delay is capped at 15 s ±25 %; one more attempt then takes a few seconds.
	took := cp.waitRoutes(t, 30*time.Second, "blog.example.com/")
	t.Logf("outage %v: converged %v after the control plane came back; calls %v", d, took.Round(time.Millisecond), cp.dp.RouteCalls())
	waitFor(t, converge, "status to show the good sync", func() bool { return s.Status().LastSyncResult == "ok" })
}

func TestAPublicLoadBalancerAddressSwitchesToDirectMode(t *testing.T) {
	env := kubetest.Cluster(t)
	cp := startControlPlane(t)
	fixture(t, env, corev1.ServiceTypeLoadBalancer)
	applyIngress(t, env, ingressSpec{name: "web", managed: true, host: "web.example.com", paths: []string{"/"}})
	s := startSyncer(t, testOptions(env.Client, env.Namespace, cp))
	forced := testOptions(env.Client, env.Namespace, startControlPlane(t)) // its own registry
	forced.ForceTunnel = true
	f := startSyncer(t, forced)
	cp.waitRoutes(t, converge, "web.example.com/")

	steps := []struct {
		name     string
		ingress  []corev1.LoadBalancerIngress
		mode     string
		endpoint string
	}{
		{"a public IP switches to direct with port 443", []corev1.LoadBalancerIngress{{IP: "203.0.113.10"}}, "direct", "203.0.113.10:443"},
		{"a private RFC 1918 IP switches back to tunnel", []corev1.LoadBalancerIngress{{IP: "10.20.30.40"}}, "tunnel", ""},
		{"a hostname is public", []corev1.LoadBalancerIngress{{Hostname: "lb.example.net"}}, "direct", "lb.example.net:443"},
	}
	api := env.Client.CoreV1().Services(env.Namespace)
	for _, st := range steps {
		svc, err := api.Get(context.Background(), "traefik", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		svc.Status.LoadBalancer.Ingress = st.ingress
		if _, err := api.UpdateStatus(context.Background(), svc, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("%s: update status: %v", st.name, err)
		}
		waitFor(t, converge, st.name, func() bool {
			c, _ := cp.dp.RouteCluster(testCluster)
			return c.RoutingMode == st.mode && c.PublicEndpoint == st.endpoint && s.Status().RoutingMode == st.mode
		})
		if s.IsPrivate() != (st.mode == "tunnel") {
			t.Fatalf("%s: IsPrivate() = %v", st.name, s.IsPrivate())
		}
		if r := cp.dp.Routes(testCluster); len(r) != 1 || r[0].RoutingMode != st.mode {
			t.Fatalf("%s: routes %+v", st.name, r)
		}
		if f.Status().RoutingMode != "tunnel" || !f.IsPrivate() {
			t.Fatalf("%s: forced tunnel mode changed to %+v", st.name, f.Status())
		}
	}
}

func waitForFirstSync(t *testing.T, cp *controlPlane) {
	t.Helper()
	waitFor(t, converge, "the first full sync", func() bool { c, _ := cp.dp.RouteCluster(testCluster); return c.Syncs == 1 })
}

func TestAChangeThatDoesNotTouchRoutesRegistersNothing(t *testing.T) {
	env := kubetest.Cluster(t)
	cp := startControlPlane(t)
	fixture(t, env, corev1.ServiceTypeClusterIP)
	startSyncer(t, testOptions(env.Client, env.Namespace, cp))
	waitForFirstSync(t, cp)
	applyIngress(t, env, ingressSpec{name: "web", managed: true, host: "web.example.com", paths: []string{"/"}})
	cp.waitRoutes(t, converge, "web.example.com/")
	before := cp.dp.RouteCalls()

	api := env.Client.NetworkingV1().Ingresses(env.Namespace)
	ing, err := api.Get(context.Background(), "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ing.Labels["team"] = "blue" // a new resourceVersion, the same routes
	if _, err := api.Update(context.Background(), ing, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// One worker handles events in order: once a later change has arrived,
	// the label change has been handled too.
	applyIngress(t, env, ingressSpec{name: "marker", managed: true, host: "marker.example.com", paths: []string{"/"}})
	cp.waitRoutes(t, converge, "marker.example.com/", "web.example.com/")
	after := cp.dp.RouteCalls()
	if after[OpRegister]-before[OpRegister] != 1 || after[OpUnregister] != before[OpUnregister] || after[OpSync] != before[OpSync] {
		t.Fatalf("calls went from %v to %v; want exactly one register (the marker)", before, after)
	}
}

func TestNothingIsSentBeforeTheClusterHasAnID(t *testing.T) {
	env := kubetest.Cluster(t)
	cp := startControlPlane(t)
	fixture(t, env, corev1.ServiceTypeClusterIP)
	applyIngress(t, env, ingressSpec{name: "web", managed: true, host: "web.example.com", paths: []string{"/"}})
	var id atomic.Value
	id.Store("")
	opt := testOptions(env.Client, env.Namespace, cp)
	opt.ClusterID = func() string { return id.Load().(string) }
	opt.Health = health.New(nil)
	startSyncer(t, opt)
	waitFor(t, converge, "the syncer to wait for a cluster id", func() bool {
		for _, c := range opt.Health.Snapshot() {
			if c.Name == HealthCondition && strings.Contains(c.Reason, "cluster id") {
				return true
			}
		}
		return false
	})
	if calls := cp.dp.RouteCalls(); len(calls) != 0 {
		t.Fatalf("calls before registration: %v", calls)
	}
	id.Store(testCluster)
	cp.waitRoutes(t, converge, "web.example.com/")
}

func TestAControllerThatAppearsLaterTriggersAFullSync(t *testing.T) {
	env := kubetest.Cluster(t)
	cp := startControlPlane(t)
	_, err := env.Client.CoreV1().Services(env.Namespace).Create(context.Background(), &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "app"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 8080}}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	applyIngress(t, env, ingressSpec{name: "web", managed: true, host: "web.example.com", paths: []string{"/"}})
	opt := testOptions(env.Client, env.Namespace, cp)
	opt.DetectTimeout = time.Second // then sync without a controller rather than wait 3 min
	s := startSyncer(t, opt)
	waitForFirstSync(t, cp)
	if c, _ := cp.dp.RouteCluster(testCluster); c.IngressController != nil {
		t.Fatalf("controller %+v before any controller Service exists", c.IngressController)
	}
	if _, _, _, ok := s.Lookup("web.example.com"); ok {
		t.Fatal("Lookup answered without a controller to target")
	}

	_, err = env.Client.CoreV1().Services(env.Namespace).Create(context.Background(), &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "traefik"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "web", Port: 8000}}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, converge, "a full sync naming the controller", func() bool {
		c, _ := cp.dp.RouteCluster(testCluster)
		return c.Syncs == 2 && c.IngressController != nil && c.IngressController.Name == "traefik" &&
			c.IngressController.Port == 8000 && c.IngressController.Type == "traefik" &&
			len(c.Routes) == 1 && c.Routes[0].ServiceName == "traefik" && c.Routes[0].ServicePort == 8000
	})
	if ns, svc, port, ok := s.Lookup("web.example.com"); !ok || ns != env.Namespace || svc != "traefik" || port != 8000 {
		t.Fatalf("Lookup = %s %s %d %v", ns, svc, port, ok)
	}
}
