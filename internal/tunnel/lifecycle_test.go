package tunnel

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pipeops/pipeops-vm-agent/internal/devplane"
	"github.com/pipeops/pipeops-vm-agent/internal/egress"
	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
	"github.com/pipeops/pipeops-vm-agent/internal/svcresolve"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

func TestMain(m *testing.M) { kubetest.Main(m) }

func TestAReconnectMidTransferErrorsTheStreamAndNewStreamsWork(t *testing.T) {
	// A target that streams forever.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 32<<10)
				for {
					if _, err := c.Write(buf); err != nil {
						return
					}
				}
			}()
		}
	}()
	echo := echoServer(t)
	r := startRig(t, Config{Forwards: map[string]string{"firehose": ln.Addr().String(), "echo": echo}}, nil, devplane.TunnelOptions{})
	c := r.open(t, devplane.TunnelTarget{Service: "firehose"})
	if _, err := io.ReadFull(c, make([]byte, 1<<20)); err != nil {
		t.Fatalf("transfer did not start: %v", err)
	}

	r.plane.DropAll() // the WebSocket dies mid-transfer

	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := io.Copy(io.Discard, c)
	if err == nil {
		t.Logf("old stream ended with EOF after %d more bytes", n)
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("old stream hung instead of failing: %v", err)
	}
	testbin.Eventually(t, 10*time.Second, "the agent dropped the old stream", func() bool { return r.mgr.Status().ActiveStreams == 0 })

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := r.plane.WaitTunnel(ctx, ""); err != nil {
		t.Fatalf("no new tunnel after reconnect: %v", err)
	}
	e := r.open(t, devplane.TunnelTarget{Service: "echo"})
	if _, err := e.Write([]byte("after reconnect")); err != nil {
		t.Fatal(err)
	}
	_ = e.Close()
	got, err := io.ReadAll(e)
	if err != nil || string(got) != "after reconnect" {
		t.Fatalf("new stream echo = %q, %v", got, err)
	}
	if !r.mgr.Status().Active {
		t.Error("status says inactive after the new session started")
	}
}

func TestAGatewayListenerCarriesHTTPToTheAgentsOwnServer(t *testing.T) {
	// The operator asks the gateway for a forward; curl on its local port
	// reaches the agent-http forward (the agent's HTTP server).
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "agent says hi to %s", r.URL.Path)
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	r := startRig(t, Config{Forwards: map[string]string{"agent-http": ln.Addr().String()}}, nil, devplane.TunnelOptions{})
	spec, err := devplane.ParseForwardFlag("agent-http")
	if err != nil {
		t.Fatal(err)
	}
	info, err := r.plane.TunnelListen(spec)
	if err != nil {
		t.Fatal(err)
	}
	defer r.plane.CloseTunnelListener(info.ID)
	for i := 0; i < 3; i++ { // new connection each time
		resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}).Get("http://" + info.Addr + "/health")
		if err != nil {
			t.Fatalf("GET through the gateway listener: %v", err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != "agent says hi to /health" {
			t.Fatalf("body = %q", body)
		}
	}
}

func TestUDPDatagramsCrossTheTunnelFramedAndUnframed(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() { // UDP echo with a prefix
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(append([]byte("echo:"), buf[:n]...), from)
		}
	}()
	for _, tc := range []struct {
		name   string
		framed bool
	}{{"unframed, as the reference gateway", false}, {"length-prefixed when the gateway advertises it", true}} {
		t.Run(tc.name, func(t *testing.T) {
			r := startRig(t, Config{Forwards: map[string]string{"dns": pc.LocalAddr().String()}}, nil, devplane.TunnelOptions{UDPFraming: tc.framed})
			info, err := r.plane.TunnelListen(devplane.ListenSpec{TunnelTarget: devplane.TunnelTarget{Protocol: "udp", Service: "dns"}})
			if err != nil {
				t.Fatal(err)
			}
			defer r.plane.CloseTunnelListener(info.ID)
			c, err := net.Dial("udp", info.Addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			// Send datagrams one at a time (unframed UDP merges coalesced
			// reads, the reference's known limitation), then, framed only,
			// a burst that must stay separate.
			for i := 0; i < 3; i++ {
				msg := []byte(fmt.Sprintf("q%d", i))
				if _, err := c.Write(msg); err != nil {
					t.Fatal(err)
				}
				_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
				buf := make([]byte, 100)
				n, err := c.Read(buf)
				if err != nil || string(buf[:n]) != "echo:"+string(msg) {
					t.Fatalf("datagram %d: got %q, %v", i, buf[:n], err)
				}
			}
			if !tc.framed {
				return
			}
			for i := 0; i < 20; i++ {
				_, _ = c.Write(bytes.Repeat([]byte{byte('a' + i)}, 100+i))
			}
			seen := map[int]bool{}
			for len(seen) < 20 {
				_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
				buf := make([]byte, 1000)
				n, err := c.Read(buf)
				if err != nil {
					t.Fatalf("burst: got %d of 20 datagrams: %v", len(seen), err)
				}
				i := n - len("echo:") - 100
				if i < 0 || i >= 20 || !bytes.Equal(buf[5:n], bytes.Repeat([]byte{byte('a' + i)}, 100+i)) {
					t.Fatalf("burst datagram merged or split: %d bytes %q", n, buf[:min(n, 40)])
				}
				seen[i] = true
			}
		})
	}
}

func TestHTTPReachesAServiceBackedByAHostProcess(t *testing.T) {
	// The API server rejects loopback endpoints (§15.10), so the Service is
	// an ExternalName to localhost, resolved by svcresolve through the host
	// resolver, and the dial policy allows loopback as an operator would
	// with security.allowed_target_cidrs. The gateway's listener names it
	// as service.namespace:port.
	env := kubetest.Cluster(t)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "service %s", r.Host)
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	_, err = env.Client.CoreV1().Services(env.Namespace).Create(context.Background(), &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "localhost"},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pol, err := egress.New(egress.Options{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}})
	if err != nil {
		t.Fatal(err)
	}
	res := svcresolve.New(env.Client, pol, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go res.Run(ctx)
	if err := res.WaitSynced(ctx); err != nil {
		t.Fatal(err)
	}

	r := startRig(t, Config{}, res, devplane.TunnelOptions{})
	spec, err := devplane.ParseForwardFlag(fmt.Sprintf("web.%s:%d", env.Namespace, port))
	if err != nil {
		t.Fatal(err)
	}
	info, err := r.plane.TunnelListen(spec)
	if err != nil {
		t.Fatal(err)
	}
	defer r.plane.CloseTunnelListener(info.ID)
	client := &http.Client{Timeout: 10 * time.Second}
	testbin.Eventually(t, 10*time.Second, "the Service answers through the tunnel", func() bool {
		resp, err := client.Get("http://" + info.Addr + "/")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode == 200 && string(body) == "service "+info.Addr
	})
}

func TestStoppingTheTunnelRefusesNewStreamsAndLetsActiveOnesFinish(t *testing.T) {
	echo := echoServer(t)
	r := startRig(t, Config{Forwards: map[string]string{"echo": echo}}, nil, devplane.TunnelOptions{})
	c := r.open(t, devplane.TunnelTarget{Service: "echo"})
	if _, err := c.Write([]byte("before")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, len("before"))); err != nil { // the agent serves it
		t.Fatal(err)
	}
	r.stopTunnel()
	testbin.Eventually(t, 5*time.Second, "new streams refused after GoAway", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		s, err := r.plane.OpenTunnelStream(ctx, "", devplane.TunnelTarget{Service: "echo"})
		if err != nil {
			return true
		}
		defer s.Close()
		_ = s.SetReadDeadline(time.Now().Add(time.Second))
		_, err = s.Write([]byte("x"))
		if err == nil {
			_, err = s.Read(make([]byte, 1))
		}
		return err != nil
	})
	select {
	case <-r.mgrDone:
		t.Fatal("Run returned while a stream was still active")
	default:
	}
	if _, err := c.Write([]byte(" after")); err != nil {
		t.Fatalf("the active stream broke when the tunnel stopped: %v", err)
	}
	_ = c.Close()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil || string(got) != " after" {
		t.Fatalf("active stream echo = %q, %v", got, err)
	}
	select {
	case <-r.mgrDone:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after the last stream ended")
	}
}
