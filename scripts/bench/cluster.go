package main

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
)

// startCluster starts a test cluster in dir with scripts/k8s/cluster.sh
// (full: with controller-manager, scheduler and kwok), owned by this
// process, and returns the function that stops it. The kubeconfig is
// dir/admin.kubeconfig.
func startCluster(dir string, full bool) (stop func(), err error) {
	start := exec.Command("scripts/k8s/cluster.sh", "start", dir)
	start.Env = append(os.Environ(), "OWNER_PID="+strconv.Itoa(os.Getpid()))
	if full {
		start.Env = append(start.Env, "FULL=1")
	}
	if out, err := start.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("start cluster (run from the repository root; build binaries with scripts/k8s/build.sh): %w\n%s", err, out)
	}
	return func() { _ = exec.Command("scripts/k8s/cluster.sh", "stop", dir).Run() }, nil
}
