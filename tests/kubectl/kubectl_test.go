package kubectl

import (
	"os"
	"strconv"
	"testing"
	"time"
)

// logsHold is how long the logs -f test keeps its stream open: two minutes
// in CI (scripts/bench relay holds one for ten), less on a laptop;
// PIPEOPS_TEST_LOGS_HOLD (a Go duration) overrides both.
func logsHold(t *testing.T) time.Duration {
	if v := os.Getenv("PIPEOPS_TEST_LOGS_HOLD"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("PIPEOPS_TEST_LOGS_HOLD=%q: %v", v, err)
		}
		return d
	}
	if ci, _ := strconv.ParseBool(os.Getenv("CI")); ci {
		return 2 * time.Minute
	}
	return 20 * time.Second
}

// One agent serves every subtest. The logs -f hold runs alongside the
// others, which run one at a time so each can check that its relays end.
func TestExecAttachLogsPortForwardAndCpWorkThroughTheAgentOnARealNode(t *testing.T) {
	s := startStack(t)
	t.Run("logs -f shows appended lines within a second for the whole hold and ends on Ctrl-C", func(t *testing.T) {
		t.Parallel()
		s.logsFollow(t, logsHold(t))
	})
	t.Run("the WebSocket commands", func(t *testing.T) {
		t.Parallel()
		shell := "shell"
		s.env.RunningPod(t, shell)
		for _, d := range doors {
			t.Run("exec returns stdout, stderr and the failure through "+d.name, func(t *testing.T) { s.execPlain(t, d, shell) })
			t.Run("exec -i passes stdin through "+d.name, func(t *testing.T) { s.execStdin(t, d, shell) })
			t.Run("exec -it runs a shell on a terminal that follows a resize through "+d.name, func(t *testing.T) { s.execTTY(t, d, shell) })
			t.Run("attach shows what the container writes through "+d.name, func(t *testing.T) { s.attach(t, d) })
			t.Run("cp copies into the pod and out of it through "+d.name, func(t *testing.T) { s.copyBothWays(t, d) })
		}
		for _, d := range []door{doors[0], doors[2]} { // port-forward has no channel version
			t.Run("port-forward carries 64 MiB each way on two connections and ends cleanly through "+d.name, func(t *testing.T) { s.portForward(t, d) })
		}
	})
}
