package kubectl

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"regexp"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

// forwardSize is what each connection sends, and gets back, through kubectl
// port-forward.
const forwardSize = 64 << 20

var forwarding = regexp.MustCompile(`Forwarding from 127\.0\.0\.1:(\d+) -> 80`)

// portForwards is the API server's gauge of open pods/portforward calls.
const portForwards = `apiserver_longrunning_requests{component="apiserver",group="",resource="pods",scope="resource",subresource="portforward",verb="CONNECT",version="v1"}`

// portForward: kubectl port-forward to a pod whose port 80 reaches an echo
// server on this host (kwok's port-forward). Two connections at once each
// send 64 MiB and read them back; both hashes must match. Ctrl-C then ends
// kubectl cleanly, the agent's relay and its call to the API server. (kwok
// keeps its own connections to the echo server open after that.)
func (s *stack) portForward(t *testing.T, d door) {
	echo := listen(t, func(c net.Conn) { _, _ = io.Copy(c, c) })
	pod := "forward-" + d.slug()
	s.env.SetPodPortForward(t, pod, echo)
	s.env.RunningPod(t, pod)
	relaysBefore := s.agentMetric("pipeops_agent_proxy_websocket_relays")
	callsBefore := s.apiserverMetric(t, portForwards)

	// Until kwok has seen the pod's PortForward object, its port 80 goes to
	// the node's default target; a failed connection may end kubectl, so
	// probe with a small echo and start again when needed.
	var k *kubectl
	var addr string
	testbin.Eventually(t, 60*time.Second, "a port-forward whose connections reach the echo server", func() bool {
		if k != nil {
			_ = k.cmd.Process.Kill()
			k.wait(t, 10*time.Second)
		}
		k = s.start(t, d.opts, "", "port-forward", pod, ":80")
		testbin.Eventually(t, 30*time.Second, "kubectl port-forward listening", func() bool {
			return forwarding.MatchString(k.stdout.String())
		}, k.stderr.String)
		addr = "127.0.0.1:" + forwarding.FindStringSubmatch(k.stdout.String())[1]
		return echoOnce(addr, []byte("probe")) == nil
	}, func() string { return k.stdout.String() + k.stderr.String() })

	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = echoHashed(addr, uint64(i))
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("connection %d: %v", i, err)
		}
	}

	if err := k.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	if code := k.wait(t, 30*time.Second); code != 0 {
		t.Errorf("kubectl port-forward after Ctrl-C: exit code %d; want 0\n%s", code, k.stderr)
	}
	testbin.Eventually(t, 30*time.Second, "the agent's relay and its API server call ended", func() bool {
		return s.agentMetric("pipeops_agent_proxy_websocket_relays") <= relaysBefore && s.apiserverMetric(t, portForwards) <= callsBefore
	}, func() string {
		return fmt.Sprintf("relays %v (before %v), API server port-forward calls %v (before %v)",
			s.agentMetric("pipeops_agent_proxy_websocket_relays"), relaysBefore, s.apiserverMetric(t, portForwards), callsBefore)
	})
}

// echoOnce sends b and reads it back.
func echoOnce(addr string, b []byte) error {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(b); err != nil {
		return err
	}
	got := make([]byte, len(b))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if !bytes.Equal(got, b) {
		return fmt.Errorf("echo %q; want %q", got, b)
	}
	return nil
}

// echoHashed sends forwardSize pseudo-random bytes while reading the echo,
// and compares the SHA-256 of both directions.
func echoHashed(addr string, seed uint64) error {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Minute))
	sent := sha256.New()
	werr := make(chan error, 1)
	go func() {
		src := io.LimitReader(rand.NewChaCha8(seedBytes(seed)), forwardSize)
		_, err := io.Copy(io.MultiWriter(c, sent), src)
		werr <- err
	}()
	got := sha256.New()
	n, err := io.Copy(got, io.LimitReader(c, forwardSize))
	if err != nil || n != forwardSize {
		return fmt.Errorf("read %d of %d echoed bytes: %v", n, forwardSize, err)
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("send: %w", err)
	}
	if !bytes.Equal(sent.Sum(nil), got.Sum(nil)) {
		return fmt.Errorf("the %d bytes that came back differ from those sent (SHA-256 %x, sent %x)", n, got.Sum(nil), sent.Sum(nil))
	}
	return nil
}

func seedBytes(seed uint64) [32]byte {
	var b [32]byte
	b[0] = byte(seed)
	return b
}
