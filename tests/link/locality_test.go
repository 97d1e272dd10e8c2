package link

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
	"github.com/pipeops/pipeops-vm-agent/internal/state"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

// TestTheRegistrationCarriesThePublicAddressOfTheConfiguredLookupService
// runs the real agent with agent.public_ip_services pointing at a local
// stand-in (the first answers garbage): register.server_ip is the stand-in's
// answer, cached in state.json, and the metadata holds only §4.1's keys.
func TestTheRegistrationCarriesThePublicAddressOfTheConfiguredLookupService(t *testing.T) {
	env := kubetest.Cluster(t)
	dp := startDevplane(t)
	var hits atomic.Int64
	garbage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "<html>busy</html>") }))
	defer garbage.Close()
	lookup := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		hits.Add(1)
		fmt.Fprintln(w, "203.0.113.77")
	}))
	defer lookup.Close()
	a := newAgent(t, dp.url(), env.Kubeconfig, "")
	f := testbin.WriteAgentConfig(t, a.dir, testbin.AgentConfig{Name: "e2e-link", Port: a.port, APIURL: dp.url(), Kubeconfig: env.Kubeconfig,
		Agent: fmt.Sprintf("  public_ip_services: [%q, %q]\n  cloud_provider: On-Prem\n", garbage.URL+"/ip", lookup.URL+"/ip")})
	a.cfg = f.Config
	a.start()
	testbin.Eventually(t, 60*time.Second, "registered and heartbeating on the gateway", heartbeatingOnGateway(dp, 1))
	var reg protocol.Register
	if err := json.Unmarshal(dp.only().LastRegister, &reg); err != nil {
		t.Fatal(err)
	}
	if reg.ServerIP != "203.0.113.77" || reg.CloudProvider != "bare-metal" || reg.Region != "unknown-country" {
		t.Errorf("register server_ip=%q cloud_provider=%q region=%q; want the lookup's 203.0.113.77, bare-metal, unknown-country",
			reg.ServerIP, reg.CloudProvider, reg.Region)
	}
	for k := range reg.Metadata {
		switch k {
		case "agent_mode", "registration_timestamp", "registration_mode":
		default:
			t.Errorf("register metadata has %q; the devplane has no ip-intel, so only the three fixed keys belong there", k)
		}
	}
	st, err := state.Open(f.StateDir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s := st.Get(); s.PublicIP != "203.0.113.77" || s.PublicIPCheckedAt.IsZero() || hits.Load() != 1 {
		t.Errorf("state public_ip %q at %v after %d lookups; want the address cached after one lookup", s.PublicIP, s.PublicIPCheckedAt, hits.Load())
	}
}
