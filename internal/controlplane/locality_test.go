package controlplane

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/devplane"
	"github.com/pipeops/pipeops-vm-agent/internal/locality"
	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

// locatorAdapter is what the daemon wires: internal/locality as the link's Locality.
type locatorAdapter struct{ l *locality.Locator }

func (a locatorAdapter) Locate(ctx context.Context) Location {
	loc := a.l.Locate(ctx)
	return Location{ServerIP: loc.ServerIP, Region: loc.Region, CloudProvider: loc.CloudProvider, Metadata: loc.Metadata}
}

func (a locatorAdapter) JoinServerURL(ctx context.Context) string { return a.l.JoinServerURL(ctx) }

func TestRegisterCarriesThePublicAddressRegionAndProviderFromTheLookups(t *testing.T) {
	p := startPlane(t)
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }))
	defer slow.Close()
	lookup := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "203.0.113.10") }))
	defer lookup.Close()
	intel := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/v1/public/ip-intel/203.0.113.10" || r.Header.Get("Authorization") != "" {
			http.Error(w, "unexpected "+r.URL.Path, http.StatusBadRequest)
			return
		}
		fmt.Fprint(w, `{"success":true,"data":{"country_code":"de","country":"Germany","region":"Saxony","org":"Hetzner Online GmbH",`+
			`"asn":"AS24940","city":"Falkenstein","isp":"Hetzner","cloud_provider":"hetzner","detection_method":"asn"}}`)
	}))
	defer intel.Close()
	loc := locality.New(locality.Options{
		LookupServices: []string{slow.URL, lookup.URL}, LookupTimeout: 300 * time.Millisecond,
		IntelURL: locality.IntelURLFor(intel.URL),
		Node: func(context.Context) (locality.Node, error) {
			return locality.Node{Name: "vm-1", ProviderID: "hcloud://1", InternalIP: "10.0.0.2"}, nil
		},
	})
	tok := filepath.Join(t.TempDir(), "node-token")
	if err := os.WriteFile(tok, []byte("K10secret::server:abc\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a := newAgent(t, testConfig(p.url()), nil, &fakeCluster{version: "v1.36.3", token: "sa-token"}, func(o *Options) {
		o.Locality, o.K3sTokenPath = locatorAdapter{loc}, tok
	})
	a.start(t)
	testbin.Eventually(t, 10*time.Second, "registration and a heartbeat", heartbeating(p, devplane.KindGateway, 1))
	c, _ := onlyCluster(p)
	var reg protocol.Register
	if err := jsonUnmarshal(c.LastRegister, &reg); err != nil {
		t.Fatal(err)
	}
	if reg.ServerIP != "203.0.113.10" || reg.Region != "DE" || reg.CloudProvider != "hetzner" {
		t.Errorf("register server_ip=%q region=%q cloud_provider=%q; want 203.0.113.10, DE, hetzner", reg.ServerIP, reg.Region, reg.CloudProvider)
	}
	want := map[string]string{"agent_mode": "vm-agent", "registration_mode": "fresh", "country_code": "DE", "region_name": "Saxony",
		"country_name": "Germany", "network_org": "Hetzner Online GmbH", "network_asn": "AS24940", "ip_intel_method": "asn"}
	for k, v := range want {
		if reg.Metadata[k] != v {
			t.Errorf("register metadata %s = %q; want %q", k, reg.Metadata[k], v)
		}
	}
	if len(reg.Metadata) != len(want)+1 { // + registration_timestamp
		t.Errorf("register metadata = %v; want only the keys of §4.1", reg.Metadata)
	}
	if wj := c.Heartbeat().WorkerJoin; wj == nil || wj.ServerURL != "https://10.0.0.2:6443" || wj.Env["K3S_URL"] != "https://10.0.0.2:6443" {
		t.Errorf("worker_join = %+v; want server_url from the node's InternalIP, not the public address", wj)
	}
}
