package attack

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
)

func createService(t *testing.T, env *kubetest.Env, svc *corev1.Service) {
	t.Helper()
	if _, err := env.Client.CoreV1().Services(env.Namespace).Create(context.Background(), svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func externalName(name, host string) *corev1.Service {
	return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: host}}
}

// headless is a selector-less headless Service whose port "http" is 80:
// its endpoints are whatever EndpointSlices name it.
func headless(name string) *corev1.Service {
	return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Ports: []corev1.ServicePort{{Name: "http", Port: 80}}}}
}

func endpointSlice(ns, svc, addr string, port int) *discoveryv1.EndpointSlice {
	name, p, ready := "http", int32(port), true
	return &discoveryv1.EndpointSlice{
		TypeMeta:    metav1.TypeMeta{APIVersion: "discovery.k8s.io/v1", Kind: "EndpointSlice"},
		ObjectMeta:  metav1.ObjectMeta{Name: svc + "-attack", Namespace: ns, Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &p}},
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{addr}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
	}
}

func TestAnExternalNameServiceCannotReachTheHostLoopback(t *testing.T) {
	env := kubetest.Cluster(t)
	b := startHostBackend(t, "127.0.0.1:0")
	createService(t, env, externalName("web", "localhost"))
	r := startAgent(t, env, "")
	assertRefused(t, r, env.Namespace, "web", b.port(), "localhost:"+strconv.Itoa(b.port()), "loopback", b)
}

func TestAnExternalNameResolvingToTheMetadataAddressIsRefused(t *testing.T) {
	env := kubetest.Cluster(t)
	// A name the host resolver turns into the cloud metadata address, as a
	// DNS record an attacker controls would.
	name := fmt.Sprintf("metadata-%d.attack.test", os.Getpid())
	addHostsLine(t, "169.254.169.254 "+name)
	createService(t, env, externalName("meta", name))
	r := startAgent(t, env, "")
	assertRefused(t, r, env.Namespace, "meta", 80, name+":80", "link_local", nil)
}

func TestAnExternalNameToTheHostsOwnAddressIsRefused(t *testing.T) {
	env := kubetest.Cluster(t)
	ip := hostIPv4(t)
	b := startHostBackend(t, net.JoinHostPort(ip, "0"))
	createService(t, env, externalName("self", ip)) // an IP is a valid DNS-1123 subdomain
	r := startAgent(t, env, "")
	assertRefused(t, r, env.Namespace, "self", b.port(), net.JoinHostPort(ip, strconv.Itoa(b.port())), "host_address", b)
}

func TestAnEndpointSliceCannotPointTheAgentAtTheHostsOwnAddress(t *testing.T) {
	env := kubetest.Cluster(t)
	ip := hostIPv4(t)
	b := startHostBackend(t, net.JoinHostPort(ip, "0"))
	createService(t, env, headless("node"))
	// The API server accepts a node's address in an EndpointSlice (pods on
	// the host network have one), so anyone who may write EndpointSlices can.
	if _, err := env.Client.DiscoveryV1().EndpointSlices(env.Namespace).Create(context.Background(),
		endpointSlice(env.Namespace, "node", ip, b.port()), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	r := startAgent(t, env, "")
	assertRefused(t, r, env.Namespace, "node", 80, net.JoinHostPort(ip, strconv.Itoa(b.port())), "host_address", b)
}

func TestAnEndpointSliceToALinkLocalAddressIsRefused(t *testing.T) {
	env := kubetest.Cluster(t)
	createService(t, env, headless("imds"))
	// The API server's validation rejects link-local endpoint addresses, so
	// the slice is written to etcd directly, as an older or differently
	// validating control plane, or anyone with datastore access, would:
	// the agent must not rely on validation done elsewhere.
	plantInEtcd(t, env, "/registry/endpointslices/"+env.Namespace+"/imds-attack", endpointSlice(env.Namespace, "imds", "169.254.169.254", 80))
	slice, err := env.Client.DiscoveryV1().EndpointSlices(env.Namespace).Get(context.Background(), "imds-attack", metav1.GetOptions{})
	if err != nil || slice.Endpoints[0].Addresses[0] != "169.254.169.254" {
		t.Fatalf("the planted EndpointSlice is not served by the API server: %v", err)
	}
	r := startAgent(t, env, "")
	assertRefused(t, r, env.Namespace, "imds", 80, "169.254.169.254:80", "link_local", nil)
}

func TestANamedForwardAndAnAllowListedServiceStillWork(t *testing.T) {
	env := kubetest.Cluster(t)
	b := startHostBackend(t, "127.0.0.1:0")
	createService(t, env, externalName("web", "localhost"))
	r := startAgent(t, env, fmt.Sprintf("  forwards:\n    - name: host-app\n      local_addr: 127.0.0.1:%d\n"+
		"security:\n  allowed_target_cidrs: [127.0.0.1/32]\n", b.port()))

	t.Run("a tunnel stream to the named forward", func(t *testing.T) {
		if got := r.tunnelGET("", "host-app", 0); !strings.Contains(got, secret) {
			t.Fatalf("the forward answered %.200q; want the backend", got)
		}
	})
	t.Run("proxy_request to the allow-listed Service", func(t *testing.T) {
		if a := r.waitResolved(env.Namespace, "web", b.port()); a.Status != http.StatusOK || a.Body != secret {
			t.Fatalf("got %s; want the backend's 200", a)
		}
	})
	t.Run("the app WebSocket relay to the allow-listed Service", func(t *testing.T) {
		if a := r.proxy(appWebSocket(env.Namespace, "web", b.port())); a.Status != http.StatusSwitchingProtocols {
			t.Fatalf("got %s; want 101", a)
		}
	})
	t.Run("a tunnel stream to the allow-listed Service", func(t *testing.T) {
		if got := r.tunnelGET(env.Namespace, "web", b.port()); !strings.Contains(got, secret) {
			t.Fatalf("the stream answered %.200q; want the backend", got)
		}
	})
	if n := r.metric("pipeops_agent_egress_refused_total", `reason="loopback"`); n != 0 {
		t.Errorf("pipeops_agent_egress_refused_total{reason=\"loopback\"} = %v; want 0", n)
	}
}

// addHostsLine appends line to /etc/hosts until the test ends.
func addHostsLine(t *testing.T, line string) {
	t.Helper()
	const hosts = "/etc/hosts"
	old, err := os.ReadFile(hosts)
	if err != nil {
		missing(t, "cannot read /etc/hosts: "+err.Error())
	}
	f, err := os.OpenFile(hosts, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		missing(t, "the test adds a line to /etc/hosts and needs root: "+err.Error())
	}
	prefix := ""
	if len(old) > 0 && !bytes.HasSuffix(old, []byte("\n")) {
		prefix = "\n"
	}
	_, err = f.WriteString(prefix + line + "\n")
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Rewritten in place: /etc/hosts may be a bind mount, which a rename cannot replace.
		cur, err := os.ReadFile(hosts)
		if err != nil {
			t.Errorf("restore /etc/hosts: %v", err)
			return
		}
		kept := strings.ReplaceAll(string(cur), line+"\n", "")
		if err := os.WriteFile(hosts, []byte(kept), 0o644); err != nil {
			t.Errorf("restore /etc/hosts: %v", err)
		}
	})
}

// plantInEtcd writes obj as JSON under key in the test cluster's etcd,
// through etcd's JSON gateway, bypassing the API server's validation.
func plantInEtcd(t *testing.T, env *kubetest.Env, key string, obj any) {
	t.Helper()
	if env.Dir == "" {
		missing(t, "the test cluster's folder (and so its etcd port) is unknown")
	}
	b, err := os.ReadFile(filepath.Join(env.Dir, "cluster.env"))
	if err != nil {
		t.Fatal(err)
	}
	port := ""
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "ETCD_PORT="); ok {
			port = v
		}
	}
	if port == "" {
		t.Fatalf("no ETCD_PORT in %s/cluster.env", env.Dir)
	}
	value, err := json.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(map[string]string{"key": base64.StdEncoding.EncodeToString([]byte(key)), "value": base64.StdEncoding.EncodeToString(value)})
	resp, err := http.Post("http://127.0.0.1:"+port+"/v3/kv/put", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatalf("etcd put: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("etcd put: %s", resp.Status)
	}
}
