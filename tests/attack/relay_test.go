package attack

import (
	"context"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

// allowLoopback lets Services reach this host's 127.0.0.1, where the
// tests' hostile backends listen.
const allowLoopback = "security:\n  allowed_target_cidrs: [127.0.0.1/32]\n"

func TestAnAppBackendCannotDecompressionBombTheAgent(t *testing.T) {
	env := kubetest.Cluster(t)
	bomb := testbin.NewDeflateBomb()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = bomb.Serve(ln) }()
	t.Cleanup(func() { ln.Close() })
	port := ln.Addr().(*net.TCPAddr).Port
	createService(t, env, externalName("bomb", "localhost"))
	r := startAgent(t, env, allowLoopback)
	pid := r.agent.Pid()

	// Each relay the bomb answers sends its one 256 MiB message at once.
	resetPeak(t, pid)
	before, _ := rssKiB(t, pid)
	s := r.session()
	var errMsg, last string
	testbin.Eventually(t, 60*time.Second, "an app relay to the bomb is answered 101 and then closed", func() bool {
		r.seq++
		id := "bomb-" + time.Now().Format("150405.000000")
		msgs, cancel := s.Subscribe(id)
		defer cancel()
		ctx, stop := context.WithTimeout(context.Background(), 30*time.Second)
		defer stop()
		if err := s.Send(ctx, protocol.TypeProxyRequest, id, appWebSocket(env.Namespace, "bomb", port)); err != nil {
			t.Fatal(err)
		}
		upgraded := false
		for {
			select {
			case env, ok := <-msgs:
				if !ok {
					t.Fatal("the agent's session ended")
				}
				last = env.Type + " " + string(env.Payload)
				switch env.Type {
				case protocol.TypeProxyResponse:
					var pr protocol.ProxyResponse
					_ = env.DecodePayload(&pr)
					if pr.Status != http.StatusSwitchingProtocols {
						return false // not resolved yet (the API server's service proxy answered)
					}
					upgraded = true
				case protocol.TypeProxyError:
					var e protocol.ErrorPayload
					_ = env.DecodePayload(&e)
					errMsg = e.Error
				case protocol.TypeProxyWebSocketClose:
					return upgraded
				case protocol.TypeProxyWebSocketData:
					t.Fatalf("the agent relayed the bomb's message (%d bytes of JSON)", len(env.Payload))
				}
			case <-ctx.Done():
				return false
			}
		}
	}, func() string { return "last message: " + last })
	_, peak := rssKiB(t, pid)
	t.Logf("agent RSS %d KiB before, peak %d KiB during the bomb (growth %d KiB); the relay ended with: %s", before, peak, peak-before, errMsg)
	if !strings.Contains(errMsg, "larger than 1048576 bytes") || !strings.Contains(errMsg, "decompression") {
		t.Errorf("the relay ended with %q; want a proxy_error saying the message inflated past 1 MiB", errMsg)
	}
	if peak-before >= 16<<10 {
		t.Errorf("the agent's RSS grew by %d KiB during the bomb; want less than 16 MiB", peak-before)
	}
	if ext := <-bomb.Offered; ext != "" {
		t.Errorf("the agent offered %q to the backend; want no compression offered", ext)
	}
}
