package routesync

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"
)

// A real API server cannot be made to drop a delete event on demand, so this
// narrow unit test feeds the informer's delete handler the tombstone that
// client-go produces after a watch gap (the reference agent ignored them, §13.14).
func TestATombstoneUnregistersTheDeletedIngress(t *testing.T) {
	ns := "shop"
	ctrl := svc(ns, "traefik", corev1.ServiceTypeClusterIP, port("web", 80))
	app := svc(ns, "app", corev1.ServiceTypeClusterIP, port("http", 8080))
	ing := ingressSpec{name: "web", managed: true, host: "web.example.com", paths: []string{"/"}}.object(ns)
	kc := fake.NewClientset(ctrl, app, ing)
	cp := startControlPlane(t)
	s := startSyncer(t, testOptions(kc, ns, cp))
	cp.waitRoutes(t, converge, "web.example.com/")
	waitFor(t, converge, "the sync to be recorded", func() bool { return s.Status().LastSyncResult == "ok" })

	// The watch missed the delete: the relist no longer has the object and
	// the informer hands the handler a DeletedFinalStateUnknown.
	if err := s.cache.ing.GetStore().Delete(ing); err != nil {
		t.Fatal(err)
	}
	s.onIngress(cache.DeletedFinalStateUnknown{Key: ns + "/web", Obj: ing})

	cp.waitRoutes(t, converge)
	if n := cp.dp.RouteCalls()[OpUnregister]; n != 1 {
		t.Fatalf("unregister calls = %d; want 1", n)
	}
	if s.RouteCount() != 0 {
		t.Fatalf("RouteCount() = %d after the tombstone; want 0", s.RouteCount())
	}
}
