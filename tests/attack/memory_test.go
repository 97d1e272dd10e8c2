package attack

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
)

const (
	// listRequests buffered list calls are in flight at once.
	listRequests = 300
	// memoryBudget is the test agent's proxy.memory_budget_bytes.
	memoryBudget = 32 << 20
	// tunnelBudget is its tunnel.memory_budget_bytes (the smallest allowed);
	// the agent's Go memory limit is the two budgets plus 32 MiB.
	tunnelBudget = 8 << 20
	// memoryOverhead is what the agent may add beyond the budget while
	// serving them: the rest of its Go memory limit (the tunnel budget and
	// the 32 MiB allowance, which hold request goroutines, HTTP/2 streams
	// and garbage not yet collected) plus 8 MiB of stacks and allocator
	// slack outside the heap. It does not grow with the load; the budget
	// is what the load fills.
	memoryOverhead = tunnelBudget + 32<<20 + 8<<20
)

func TestThreeHundredConcurrentLargeListsCannotExhaustTheAgentsMemory(t *testing.T) {
	env := kubetest.Cluster(t)
	ctx := context.Background()
	// Two ConfigMaps of 1 MB of hex (compresses about 2:1): a list of about 2 MB.
	for i := 0; i < 2; i++ {
		raw := make([]byte, 500_000)
		_, _ = rand.Read(raw)
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("big-%d", i)}, Data: map[string]string{"v": hex.EncodeToString(raw)}}
		if _, err := env.Client.CoreV1().ConfigMaps(env.Namespace).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	r := startAgent(t, env, fmt.Sprintf("  memory_budget_bytes: %d\nproxy:\n  max_in_flight: 512\n  memory_budget_bytes: %d\n", tunnelBudget, memoryBudget))
	path := "/api/v1/namespaces/" + env.Namespace + "/configmaps"
	one := r.proxy(protocol.ProxyRequest{Method: http.MethodGet, Path: path})
	if one.Status != http.StatusOK || len(one.Body) < 2_000_000 {
		t.Fatalf("a single list: %s; want 200 and about 2 MB", one)
	}
	size := len(one.Body)
	pid := r.agent.Pid()
	resetPeak(t, pid)
	before, _ := rssKiB(t, pid)

	s := r.session()
	var wg sync.WaitGroup
	var mu sync.Mutex
	outcomes := map[string]int{}
	var odd []string
	for i := 0; i < listRequests; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			id := fmt.Sprintf("list-%d", i)
			msgs, cancel := s.Subscribe(id)
			defer cancel()
			cctx, stop := context.WithTimeout(ctx, 3*time.Minute)
			defer stop()
			outcome := "no answer within 3 minutes"
			defer func() {
				mu.Lock()
				outcomes[outcome]++
				mu.Unlock()
			}()
			if err := s.Send(cctx, protocol.TypeProxyRequest, id, protocol.ProxyRequest{Method: http.MethodGet, Path: path}); err != nil {
				outcome = "send failed: " + err.Error()
				return
			}
			for {
				select {
				case env, ok := <-msgs:
					if !ok {
						outcome = "session ended"
						return
					}
					switch env.Type {
					case protocol.TypeProxyResponse:
						var pr protocol.ProxyResponse
						_ = env.DecodePayload(&pr)
						if body := decodeBody(t, pr.Body, pr.Encoding); pr.Status == http.StatusOK && len(body) == size {
							outcome = "the whole list"
						} else {
							outcome = fmt.Sprintf("status %d with %d bytes", pr.Status, len(body))
						}
						return
					case protocol.TypeProxyError:
						var e protocol.ErrorPayload
						_ = env.DecodePayload(&e)
						switch {
						case strings.Contains(e.Error, "proxy.memory_budget_bytes"):
							outcome = "a clear over-budget error"
						default:
							outcome = "proxy_error"
							mu.Lock()
							odd = append(odd, e.Error)
							mu.Unlock()
						}
						return
					}
				case <-cctx.Done():
					return
				}
			}
		}(i)
	}
	wg.Wait()
	_, peak := rssKiB(t, pid)
	growth := (peak - before) << 10
	t.Logf("%d concurrent buffered lists of %d bytes: %v; agent RSS %d KiB before, peak %d KiB (growth %d MiB; budget %d MiB + stated overhead %d MiB)",
		listRequests, size, outcomes, before, peak, growth>>20, memoryBudget>>20, memoryOverhead>>20)
	if outcomes["the whole list"]+outcomes["a clear over-budget error"] != listRequests {
		t.Errorf("every request must end with the whole list or a clear over-budget error; got %v, other errors: %.3q", outcomes, odd)
	}
	if outcomes["the whole list"] == 0 {
		t.Errorf("no list got through at all: %v", outcomes)
	}
	if growth > memoryBudget+memoryOverhead {
		t.Errorf("the agent's RSS grew by %d MiB; want at most the budget (%d MiB) plus %d MiB", growth>>20, memoryBudget>>20, memoryOverhead>>20)
	}
}
