package kube

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

// fakeAPI serves just enough of the Kubernetes API for the telemetry
// informers (nodes and pods: list, then a watch that stays open) and,
// when metrics is true, metrics.k8s.io. A narrow stand-in: the metrics API
// is not part of the test cluster.
func fakeAPI(t *testing.T, metrics bool) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	list := func(kind, items string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			if r.URL.Query().Get("sendInitialEvents") == "true" {
				// No streaming lists here: the reflector falls back to LIST.
				w.WriteHeader(http.StatusBadRequest)
				fmt.Fprint(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"BadRequest","code":400}`)
				return
			}
			if r.URL.Query().Get("watch") == "true" {
				w.WriteHeader(http.StatusOK)
				w.(http.Flusher).Flush()
				<-r.Context().Done()
				return
			}
			fmt.Fprintf(w, `{"kind":%q,"apiVersion":"v1","metadata":{"resourceVersion":"1"},"items":[%s]}`, kind, items)
		}
	}
	node := func(name string) string {
		return `{"metadata":{"name":"` + name + `"},"status":{"allocatable":{"cpu":"4","memory":"8Gi"},` +
			`"addresses":[{"type":"InternalIP","address":"192.0.2.` + strconv.Itoa(int(name[0])) + `"}]}}`
	}
	mux.HandleFunc("/api/v1/nodes", list("NodeList", node("a")+","+node("b")))
	mux.HandleFunc("/api/v1/pods", list("PodList",
		`{"metadata":{"name":"p","namespace":"x"},"spec":{"nodeName":"a","containers":[{"name":"c","resources":{"requests":{"cpu":"4","memory":"8Gi"}}}]},"status":{"phase":"Running"}}`))
	if metrics {
		mux.HandleFunc("/apis/metrics.k8s.io/v1beta1", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprint(w, `{"kind":"APIResourceList","apiVersion":"v1","groupVersion":"metrics.k8s.io/v1beta1","resources":[{"name":"nodes","namespaced":false,"kind":"NodeMetrics","verbs":["get","list"]}]}`)
		})
		mux.HandleFunc("/apis/metrics.k8s.io/v1beta1/nodes", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprint(w, `{"kind":"NodeMetricsList","apiVersion":"metrics.k8s.io/v1beta1","items":[`+
				`{"metadata":{"name":"a"},"usage":{"cpu":"1500m","memory":"2Gi"}},{"metadata":{"name":"b"},"usage":{"cpu":"500m","memory":"2Gi"}}]}`)
		})
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/apis/metrics.k8s.io") {
			http.NotFound(w, r)
			return
		}
		t.Logf("fake API: unexpected %s %s", r.Method, r.URL)
		http.NotFound(w, r)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

func TestUsageComesFromTheMetricsAPIWhenServedAndFromRequestsOtherwise(t *testing.T) {
	tests := []struct {
		name    string
		metrics bool
		want    Telemetry
	}{
		{"metrics.k8s.io served: node usage over allocatable", true,
			Telemetry{Nodes: 2, Pods: 1, CPUUsage: "25.0%", MemoryUsage: "25.0%", CPUSource: "metrics-api on 2 nodes", MemorySource: "metrics-api on 2 nodes"}},
		{"no metrics API: requests over allocatable", false,
			Telemetry{Nodes: 2, Pods: 1, CPUUsage: "50.0%", MemoryUsage: "50.0%", CPUSource: "requests on 2 nodes", MemorySource: "requests on 2 nodes"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := fakeAPI(t, tt.metrics)
			cs, err := kubernetes.NewForConfig(&rest.Config{Host: srv.URL})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			tel := newTelemetry(cs, time.Now, time.Minute, time.Minute)
			tel.hostname, tel.local = "", func() map[string]bool { return nil } // neither node is this machine
			tel.start(ctx)
			testbin.Eventually(t, 10*time.Second, "the informers synced against the fake API", tel.synced)
			got, err := tel.get(ctx)
			if err != nil || got != tt.want {
				t.Fatalf("telemetry = %+v, %v; want %+v", got, err, tt.want)
			}
			cancel()
			tel.factory.Shutdown()
		})
	}
}

// The node this machine is reports what /proc says; the others what the
// metrics API says. Node a's address is one of "this machine's" here.
func TestTheNodeTheAgentRunsOnReportsProcAndTheOthersTheMetricsAPI(t *testing.T) {
	srv := fakeAPI(t, true)
	cs, err := kubernetes.NewForConfig(&rest.Config{Host: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	now := time.Now()
	tel := newTelemetry(cs, func() time.Time { return now }, time.Minute, time.Minute)
	tel.hostname, tel.local = "", func() map[string]bool { return map[string]bool{"192.0.2.97": true} }
	tel.start(ctx)
	defer func() { cancel(); tel.factory.Shutdown() }()
	testbin.Eventually(t, 10*time.Second, "the informers synced against the fake API", tel.synced)
	now = now.Add(2 * time.Second) // past the first CPU interval
	got, err := tel.get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const want = "proc on a + metrics-api on b"
	if got.CPUSource != want || got.MemorySource != want || got.CPUUsage == "" || got.MemoryUsage == "" {
		t.Fatalf("telemetry = %+v; want both figures from %q", got, want)
	}
}
