package locality

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/state"
)

// service is a stand-in lookup or ip-intel server that counts its hits.
type service struct {
	*httptest.Server
	hits atomic.Int64
	mu   sync.Mutex
	reqs []*http.Request
}

func newService(t *testing.T, h http.HandlerFunc) *service {
	s := &service{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		s.mu.Lock()
		s.reqs = append(s.reqs, r.Clone(context.Background()))
		s.mu.Unlock()
		h(w, r)
	}))
	t.Cleanup(s.Close)
	return s
}

func answer(body string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, body) }
}

// hang answers only when the client gives up.
func hang(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func memState(t *testing.T) *state.Store {
	st, err := state.Open("", nil)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestPublicIPTriesTheServicesInOrderPastTimeoutsAndGarbage(t *testing.T) {
	slow := newService(t, hang)
	garbage := newService(t, answer("<html>rate limited</html>"))
	private := newService(t, answer("10.1.2.3\n"))
	good := newService(t, answer("203.0.113.10\n"))
	never := newService(t, answer("198.51.100.1"))
	st := memState(t)
	clk := &clock{t: time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)}
	l := New(Options{LookupServices: []string{slow.URL, garbage.URL, private.URL, good.URL, never.URL},
		LookupTimeout: 200 * time.Millisecond, State: st, Now: clk.now, LocalIP: func() string { return "192.168.1.9" }})

	if got := l.PublicIP(t.Context()); got != "203.0.113.10" {
		t.Fatalf("PublicIP = %q; want 203.0.113.10 from the fourth service", got)
	}
	for name, s := range map[string]*service{"slow": slow, "garbage": garbage, "private": private, "good": good} {
		if s.hits.Load() != 1 {
			t.Errorf("%s service asked %d times; want once, in order", name, s.hits.Load())
		}
	}
	if never.hits.Load() != 0 {
		t.Errorf("the service after a good answer was asked")
	}
	if s := st.Get(); s.PublicIP != "203.0.113.10" || !s.PublicIPCheckedAt.Equal(clk.now()) {
		t.Errorf("state cache = %q at %v; want the address and the time", s.PublicIP, s.PublicIPCheckedAt)
	}

	// Within the hour the cached address is used; after it, the services again.
	clk.add(59 * time.Minute)
	if got := l.PublicIP(t.Context()); got != "203.0.113.10" || good.hits.Load() != 1 {
		t.Errorf("PublicIP after 59m = %q with %d lookups; want the cache", got, good.hits.Load())
	}
	clk.add(2 * time.Minute)
	l.PublicIP(t.Context())
	if good.hits.Load() != 2 {
		t.Errorf("after 61m the lookup services were asked %d times; want a refresh", good.hits.Load())
	}
	// A restarted agent (new Locator, same state) reuses the cache.
	l2 := New(Options{LookupServices: []string{good.URL}, State: st, Now: clk.now})
	if got := l2.PublicIP(t.Context()); got != "203.0.113.10" || good.hits.Load() != 2 {
		t.Errorf("after a restart PublicIP = %q with %d lookups; want the persisted cache", got, good.hits.Load())
	}
}

func TestPublicIPFallsBackToTheStaleCacheThenTheLocalAddressThenZero(t *testing.T) {
	down := newService(t, func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) })
	long := newService(t, answer(strings.Repeat("2", 1000)))
	clk := &clock{t: time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)}
	st := memState(t)
	if err := st.Update(func(s *state.State) error {
		s.PublicIP, s.PublicIPCheckedAt = "198.51.100.7", clk.now().Add(-3*time.Hour)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	local := "192.168.1.9"
	opts := Options{LookupServices: []string{down.URL, long.URL}, State: st, Now: clk.now, LocalIP: func() string { return local }}
	if got := New(opts).PublicIP(t.Context()); got != "198.51.100.7" {
		t.Errorf("with every service failing PublicIP = %q; want the stale cached address", got)
	}
	opts.State = nil
	if got := New(opts).PublicIP(t.Context()); got != local {
		t.Errorf("without a cache PublicIP = %q; want the local address %s", got, local)
	}
	local = ""
	if got := New(opts).PublicIP(t.Context()); got != "0.0.0.0" {
		t.Errorf("without any address PublicIP = %q; want 0.0.0.0", got)
	}
	opts.LookupServices = []string{} // configured empty: no lookups at all
	local = "192.168.1.9"
	before := down.hits.Load()
	if got := New(opts).PublicIP(t.Context()); got != local || down.hits.Load() != before {
		t.Errorf("with no lookup services PublicIP = %q and %d lookups; want the local address and none", got, down.hits.Load()-before)
	}
}

func TestConfiguredServerIPIsUsedWithoutAnyLookup(t *testing.T) {
	svc := newService(t, answer("203.0.113.10"))
	l := New(Options{ServerIP: "198.51.100.99", LookupServices: []string{svc.URL}})
	if got := l.PublicIP(t.Context()); got != "198.51.100.99" || svc.hits.Load() != 0 {
		t.Errorf("PublicIP = %q after %d lookups; want the configured 198.51.100.99 and none", got, svc.hits.Load())
	}
}

const intelAnswer = `{"success":true,"data":{"ip":"203.0.113.10","country_code":"de","country":"Germany","region":"Bavaria",` +
	`"city":"Falkenstein","asn":"AS24940","org":"Hetzner Online GmbH","isp":"Hetzner","cloud_provider":"Hetzner","detection_method":"asn"}}`

func hetznerNode(context.Context) (Node, error) {
	return Node{Name: "vm-1", ProviderID: "hcloud://4711", InternalIP: "10.0.0.2",
		Labels: map[string]string{"topology.kubernetes.io/region": "fsn1"}}, nil
}

func TestLocateTakesTheNodeThenTheControlPlanesIPIntelThenConfig(t *testing.T) {
	lookup := newService(t, answer("203.0.113.10"))
	intel := newService(t, answer(intelAnswer))
	opts := Options{LookupServices: []string{lookup.URL}, IntelURL: IntelURLFor(intel.URL + "/base/"), Node: hetznerNode}

	loc := New(opts).Locate(t.Context())
	want := Location{ServerIP: "203.0.113.10", Region: "DE", CloudProvider: "hetzner", Metadata: map[string]string{
		"country_code": "DE", "region_name": "Bavaria", "country_name": "Germany", "network_org": "Hetzner Online GmbH",
		"network_asn": "AS24940", "ip_intel_method": "asn"}}
	if fmt.Sprint(loc) != fmt.Sprint(want) {
		t.Errorf("Locate =\n %+v\nwant\n %+v", loc, want)
	}
	intel.mu.Lock()
	r := intel.reqs[0]
	intel.mu.Unlock()
	if r.URL.Path != "/base/api/v1/public/ip-intel/203.0.113.10" || r.Header.Get("Authorization") != "" || r.Method != http.MethodGet {
		t.Errorf("ip-intel request %s %s (Authorization %q); want GET <api_url>/api/v1/public/ip-intel/<ip> without credentials",
			r.Method, r.URL.Path, r.Header.Get("Authorization"))
	}

	// Without ip-intel the node's providerID and topology label remain.
	noIntel := opts
	noIntel.IntelURL = ""
	if loc := New(noIntel).Locate(t.Context()); loc.Region != "fsn1" || loc.CloudProvider != "hetzner" || len(loc.Metadata) != 0 {
		t.Errorf("Locate without ip-intel = %+v; want region fsn1, provider hetzner from the node, no metadata", loc)
	}
	// Configuration wins over both.
	conf := opts
	conf.Region, conf.CloudProvider = "NL", "On-Premises"
	if loc := New(conf).Locate(t.Context()); loc.Region != "NL" || loc.CloudProvider != "bare-metal" || loc.Metadata["country_code"] != "DE" {
		t.Errorf("Locate with config = %+v; want region NL, provider bare-metal, intel metadata kept", loc)
	}
	// Nothing known at all.
	bare := New(Options{LookupServices: []string{}, LocalIP: func() string { return "" }}).Locate(t.Context())
	if bare.ServerIP != "0.0.0.0" || bare.Region != UnknownRegion || bare.CloudProvider != "agent" || len(bare.Metadata) != 0 {
		t.Errorf("Locate with nothing = %+v; want 0.0.0.0, %s, agent", bare, UnknownRegion)
	}
}

func TestIPIntelGarbageTimeoutsAndErrorsAreIgnored(t *testing.T) {
	for _, tc := range []struct {
		name    string
		handler http.HandlerFunc
		region  string
		meta    map[string]string
	}{
		{"not JSON", answer("<html>oops</html>"), "fsn1", nil},
		{"HTTP 500", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(500) }, "fsn1", nil},
		{"timeout", hang, "fsn1", nil},
		{"success false", answer(`{"success":false,"data":{"country_code":"US"}}`), "fsn1", nil},
		{"bad country code and unprintable org", answer(`{"country_code":"Germany","org":"evil\u0007","asn":24940}`), "fsn1",
			map[string]string{"network_asn": "24940"}},
		{"unwrapped answer", answer(`{"country_code":"fr","cloud_provider":""}`), "FR", map[string]string{"country_code": "FR"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			intel := newService(t, tc.handler)
			l := New(Options{ServerIP: "203.0.113.10", IntelURL: IntelURLFor(intel.URL), IntelTimeout: 200 * time.Millisecond, Node: hetznerNode})
			loc := l.Locate(t.Context())
			if loc.Region != tc.region || loc.CloudProvider != "hetzner" || fmt.Sprint(loc.Metadata) != fmt.Sprint(orEmpty(tc.meta)) {
				t.Errorf("Locate = %+v; want region %s, provider hetzner, metadata %v", loc, tc.region, tc.meta)
			}
		})
	}
}

func orEmpty(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

func TestIPIntelIsNotAskedAboutPrivateAddresses(t *testing.T) {
	intel := newService(t, answer(intelAnswer))
	l := New(Options{LookupServices: []string{}, LocalIP: func() string { return "10.0.0.2" }, IntelURL: IntelURLFor(intel.URL)})
	if loc := l.Locate(t.Context()); loc.ServerIP != "10.0.0.2" || intel.hits.Load() != 0 {
		t.Errorf("Locate = %+v after %d ip-intel calls; want the local address and no call", loc, intel.hits.Load())
	}
}

func TestJoinServerURLPrefersConfigThenTheNodesInternalIP(t *testing.T) {
	lookup := newService(t, answer("203.0.113.10"))
	opts := Options{LookupServices: []string{lookup.URL}, Node: hetznerNode, LocalIP: func() string { return "192.168.1.9" }}
	if got := New(opts).JoinServerURL(t.Context()); got != "https://10.0.0.2:6443" {
		t.Errorf("JoinServerURL = %q; want the node's InternalIP, not the public address", got)
	}
	opts.JoinServerURL = "https://k3s.internal.example:6443"
	if got := New(opts).JoinServerURL(t.Context()); got != opts.JoinServerURL {
		t.Errorf("JoinServerURL = %q; want the configured one", got)
	}
	opts.JoinServerURL = ""
	opts.Node = func(context.Context) (Node, error) { return Node{}, errors.New("apiserver down") }
	if got := New(opts).JoinServerURL(t.Context()); got != "https://192.168.1.9:6443" {
		t.Errorf("JoinServerURL without the node = %q; want the local address", got)
	}
	if lookup.hits.Load() != 0 {
		t.Errorf("JoinServerURL asked the public lookup service")
	}
}

func TestPickNodeFindsThisHostsNode(t *testing.T) {
	cp := map[string]string{"node-role.kubernetes.io/control-plane": "true"}
	nodes := []Node{{Name: "worker-1"}, {Name: "server-1", Labels: cp}, {Name: "vm-prod-1"}}
	for _, tc := range []struct {
		host string
		want string
	}{
		{"vm-prod-1", "vm-prod-1"}, {"VM-PROD-1.example.com", "vm-prod-1"}, {"elsewhere", "server-1"},
	} {
		if n, ok := PickNode(nodes, tc.host); !ok || n.Name != tc.want {
			t.Errorf("PickNode(%s) = %q; want %q", tc.host, n.Name, tc.want)
		}
	}
	if n, _ := PickNode(nodes[:1], "elsewhere"); n.Name != "worker-1" {
		t.Errorf("PickNode of a single node = %q; want it", n.Name)
	}
	if _, ok := PickNode(nil, "x"); ok {
		t.Errorf("PickNode(nil) ok")
	}
}

func TestProvidersAreNormalised(t *testing.T) {
	for in, want := range map[string]string{"": "agent", "On-Premises": "bare-metal", "onprem": "bare-metal", "baremetal": "bare-metal", "AWS": "aws"} {
		if got := NormaliseProvider(in); got != want {
			t.Errorf("NormaliseProvider(%q) = %q; want %q", in, got, want)
		}
	}
	for id, want := range map[string]string{"aws:///eu-central-1a/i-0abc": "aws", "gce://proj/zone/vm": "gcp", "k3s://vm-1": "", "": ""} {
		if got := providerFromID(id); got != want {
			t.Errorf("providerFromID(%q) = %q; want %q", id, got, want)
		}
	}
}

func TestCloudMetadataIsAskedOnlyWhenEnabledAndOnlyWithoutNodeFacts(t *testing.T) {
	// A stand-in for AWS's IMDSv2: a session token first, then the region.
	imds := newService(t, func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodPut && r.URL.Path == "/latest/api/token" && r.Header.Get("X-aws-ec2-metadata-token-ttl-seconds") != "":
			fmt.Fprint(w, "tok-1")
		case r.URL.Path == "/latest/meta-data/placement/region" && r.Header.Get("X-aws-ec2-metadata-token") == "tok-1":
			fmt.Fprint(w, "eu-central-1")
		default:
			http.NotFound(w, r)
		}
	})
	bareNode := func(context.Context) (Node, error) { return Node{Name: "vm-1", ProviderID: "k3s://vm-1"}, nil }
	opts := Options{ServerIP: "10.0.0.2", MetadataURL: imds.URL, Node: bareNode}

	if loc := New(opts).Locate(t.Context()); loc.CloudProvider != "agent" || imds.hits.Load() != 0 {
		t.Errorf("without cloud_metadata: Locate = %+v after %d metadata requests; want none", loc, imds.hits.Load())
	}
	opts.CloudMetadata = true
	l := New(opts)
	if loc := l.Locate(t.Context()); loc.CloudProvider != "aws" || loc.Region != "eu-central-1" {
		t.Errorf("with cloud_metadata: Locate = %+v; want aws, eu-central-1", loc)
	}
	asked := imds.hits.Load()
	l.Locate(t.Context())
	if imds.hits.Load() != asked {
		t.Errorf("the metadata service was asked again; want once per process")
	}
	// The node's providerID wins; the metadata service is not asked.
	opts.Node = hetznerNode
	before := imds.hits.Load()
	if loc := New(opts).Locate(t.Context()); loc.CloudProvider != "hetzner" || imds.hits.Load() != before {
		t.Errorf("with node facts: Locate = %+v after %d metadata requests; want hetzner and none", loc, imds.hits.Load()-before)
	}
}

func TestCloudMetadataOfOtherCloudsIsRead(t *testing.T) {
	for _, tc := range []struct {
		provider, path, header, value, answer, region string
	}{
		{"gcp", "/computeMetadata/v1/instance/zone", "Metadata-Flavor", "Google", "projects/42/zones/europe-west1-b", "europe-west1"},
		{"azure", "/metadata/instance/compute/location", "Metadata", "true", "westeurope", "westeurope"},
		{"digitalocean", "/metadata/v1/region", "", "", "fra1", "fra1"},
		{"hetzner", "/hetzner/v1/metadata/region", "", "", "eu-central", "eu-central"},
	} {
		t.Run(tc.provider, func(t *testing.T) {
			svc := newService(t, func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == tc.path && (tc.header == "" || r.Header.Get(tc.header) == tc.value) {
					fmt.Fprintln(w, tc.answer)
					return
				}
				http.NotFound(w, r)
			})
			l := New(Options{ServerIP: "10.0.0.2", CloudMetadata: true, MetadataURL: svc.URL})
			if loc := l.Locate(t.Context()); loc.CloudProvider != tc.provider || loc.Region != tc.region {
				t.Errorf("Locate = %+v; want %s, %s", loc, tc.provider, tc.region)
			}
		})
	}
}
