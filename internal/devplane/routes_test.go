package devplane_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/pipeops/pipeops-vm-agent/internal/devplane"
	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
)

func postRoute(t *testing.T, base, token, path string, body any) int {
	t.Helper()
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(http.MethodPost, base+path, bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func hosts(rs []devplane.RouteEntry) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.Hostname+r.Path)
	}
	return out
}

func TestTheRouteRegistryAppliesRegisterSyncAndUnregister(t *testing.T) {
	s := devplane.New(devplane.Config{Tokens: []string{"tok"}})
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()

	reg := func(host, path string) protocol.RouteRegister {
		return protocol.RouteRegister{Hostname: host, ClusterUUID: "c1", Namespace: "pipeops-system", ServiceName: "traefik",
			ServicePort: 80, IngressName: "web", Path: path, PathType: "Prefix"}
	}
	steps := []struct {
		name  string
		token string
		path  string
		body  any
		code  int
		want  []string
	}{
		{"a call without the token is refused", "", protocol.PathRoutesRegister, reg("a.example.com", "/"), 401, nil},
		{"a call with a wrong token is refused", "nope", protocol.PathRoutesRegister, reg("a.example.com", "/"), 401, nil},
		{"register adds a route", "tok", protocol.PathRoutesRegister, reg("a.example.com", "/"), 200, []string{"a.example.com/"}},
		{"register of a second path adds it", "tok", protocol.PathRoutesRegister, reg("a.example.com", "/api"), 200,
			[]string{"a.example.com/", "a.example.com/api"}},
		{"register without a hostname is a bad request", "tok", protocol.PathRoutesRegister, reg("", "/"), 400,
			[]string{"a.example.com/", "a.example.com/api"}},
		{"unregister removes every path of the host", "tok", protocol.PathRoutesUnregister,
			protocol.RouteUnregister{Hostname: "a.example.com"}, 200, []string{}},
		{"sync replaces the whole set", "tok", protocol.PathRoutesSync, protocol.RouteSync{ClusterUUID: "c1", RoutingMode: "tunnel",
			IngressController: &protocol.IngressController{Name: "traefik", Namespace: "pipeops-system", Port: 80, Type: "traefik"},
			Ingresses: []protocol.SyncIngress{{Namespace: "app", IngressName: "web", Rules: []protocol.SyncRule{{Host: "b.example.com",
				Paths: []protocol.SyncPath{{Path: "/", PathType: "Prefix", ServiceName: "traefik", ServicePort: 80}}}}}}}, 200,
			[]string{"b.example.com/"}},
		{"sync with no ingresses clears the cluster", "tok", protocol.PathRoutesSync,
			protocol.RouteSync{ClusterUUID: "c1", Ingresses: []protocol.SyncIngress{}}, 200, []string{}},
	}
	for _, st := range steps {
		if code := postRoute(t, srv.URL, st.token, st.path, st.body); code != st.code {
			t.Fatalf("%s: HTTP %d; want %d", st.name, code, st.code)
		}
		if st.want == nil {
			continue
		}
		if got := hosts(s.Routes("c1")); len(got) != len(st.want) || (len(got) > 0 && !equal(got, st.want)) {
			t.Fatalf("%s: routes %v; want %v", st.name, got, st.want)
		}
	}
	c, _ := s.RouteCluster("c1")
	if c.Syncs != 2 {
		t.Fatalf("syncs = %d; want 2", c.Syncs)
	}
	if calls := s.RouteCalls(); calls["register"] != 5 || calls["sync"] != 2 || calls["unregister"] != 1 {
		t.Fatalf("calls = %v; want register 5, sync 2, unregister 1", calls)
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestAnInjectedRouteFaultAnswersTheNextCallsAndThenClears(t *testing.T) {
	s := devplane.New(devplane.Config{Tokens: []string{"tok"}})
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	req, _ := http.NewRequest(http.MethodPut, srv.URL+"/admin/routes/faults", bytes.NewReader([]byte(`{"status":503,"count":3,"ops":["sync"]}`)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	body := protocol.RouteSync{ClusterUUID: "c1", Ingresses: []protocol.SyncIngress{}}
	var codes []int
	for range 4 {
		codes = append(codes, postRoute(t, srv.URL, "tok", protocol.PathRoutesSync, body))
	}
	if codes[0] != 503 || codes[1] != 503 || codes[2] != 503 || codes[3] != 200 {
		t.Fatalf("codes = %v; want 503 ×3 then 200", codes)
	}
	if code := postRoute(t, srv.URL, "tok", protocol.PathRoutesUnregister, protocol.RouteUnregister{Hostname: "x"}); code != 200 {
		t.Fatalf("an operation outside the fault's ops got %d; want 200", code)
	}

	resp, err = http.Get(srv.URL + "/admin/routes")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var reg devplane.RouteRegistry
	if err := json.NewDecoder(resp.Body).Decode(&reg); err != nil {
		t.Fatal(err)
	}
	if len(reg.Clusters) != 1 || reg.Clusters[0].ClusterUUID != "c1" || reg.Calls["sync"] != 4 {
		t.Fatalf("admin registry = %+v; want cluster c1 and 4 sync calls", reg)
	}
}
