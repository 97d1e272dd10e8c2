//go:build pipeops_testhooks

package daemon

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// stallHook (test builds only) wedges every watched loop whose name is
// listed in the file "wedge" in runtimeDir (beside the local API socket),
// for as long as it is listed: the end-to-end and systemd tests use it to
// prove that a hung loop stops the watchdog pings and systemd restarts the
// agent.
func stallHook(runtimeDir string) func(loop string) {
	path := filepath.Join(runtimeDir, "wedge")
	return func(loop string) {
		for {
			b, err := os.ReadFile(path)
			if err != nil || !slices.Contains(strings.Fields(string(b)), loop) {
				return
			}
			time.Sleep(50 * time.Millisecond) // a hung loop: nothing to wait on
		}
	}
}
