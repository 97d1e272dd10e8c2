package kubectl

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

// logRequests is the API server's gauge of open pods/log calls: it shows
// that the agent's call to the API server (and the API server's to the
// kubelet) ended, not just kubectl.
const logRequests = `apiserver_longrunning_requests{component="apiserver",group="",resource="pods",scope="resource",subresource="log",verb="CONNECT",version="v1"}`

// logsFollow holds one kubectl logs -f through the agent for hold: the
// lines appended to the container's log meanwhile must reach kubectl within
// a second (the median; on a CI box shared by parallel tests a single line
// may take longer, but never 5 s), and Ctrl-C must end kubectl and the
// calls behind it.
func (s *stack) logsFollow(t *testing.T, hold time.Duration) {
	pod := "logs"
	file := filepath.Join(t.TempDir(), "container.log")
	writeFile(t, file, kubetest.CRILine("stdout", "written-before-start"))
	s.env.SetPodLogs(t, pod, file)
	s.env.RunningPod(t, pod)
	testbin.Eventually(t, 30*time.Second, "kwok serves the pod's own log file", func() bool {
		out, _, _ := s.run(t, doors[0].opts, "", "logs", pod)
		return strings.Contains(out, "written-before-start")
	})
	before := s.apiserverMetric(t, logRequests)

	k := s.start(t, doors[0].opts, "", "logs", "-f", pod)
	testbin.Eventually(t, 30*time.Second, "logs -f shows the existing line", func() bool {
		return strings.Contains(k.stdout.String(), "written-before-start\n")
	}, k.stderr.String)
	start := time.Now()
	var took []time.Duration
	for i := 1; i == 1 || time.Since(start) < hold; i++ {
		line := fmt.Sprintf("appended-%d-at-%s", i, time.Since(start).Round(time.Second))
		written := time.Now()
		appendFile(t, file, kubetest.CRILine("stdout", line))
		testbin.Eventually(t, 5*time.Second, "line "+line+" (streamed, not held back)", func() bool {
			return strings.Contains(k.stdout.String(), line+"\n")
		}, k.stderr.String)
		took = append(took, time.Since(written))
		select {
		case <-k.done:
			t.Fatalf("kubectl logs -f ended after %s: %s", time.Since(start), k.stderr)
		case <-time.After(min(5*time.Second, hold/4)):
		}
	}
	during := s.apiserverMetric(t, logRequests)
	if during < before+1 {
		t.Errorf("open pods/log calls on the API server while following: %v (before %v); want one more", during, before)
	}
	slices.Sort(took)
	t.Logf("logs -f held open %s; %d lines, median %s, slowest %s", time.Since(start).Round(time.Second), len(took), took[len(took)/2], took[len(took)-1])
	if median := took[len(took)/2]; median > time.Second {
		t.Errorf("appended lines reached kubectl after a median %s; want within a second", median)
	}

	if err := k.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	k.wait(t, 10*time.Second)
	if e := k.stderr.String(); e != "" {
		t.Errorf("kubectl logs -f after Ctrl-C wrote to stderr: %s", e)
	}
	testbin.Eventually(t, 10*time.Second, "the API server's pods/log call ended (the agent cancelled its backend call)", func() bool {
		return s.apiserverMetric(t, logRequests) <= during-1
	})
}
