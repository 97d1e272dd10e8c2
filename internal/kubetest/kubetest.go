// Package kubetest gives tests a real Kubernetes control plane: etcd and
// kube-apiserver (and, in FULL mode, kube-controller-manager, kube-scheduler,
// kwok and a fake Ready node) built by scripts/k8s/build.sh and started by
// scripts/k8s/cluster.sh on free loopback ports.
//
// Cluster reuses the cluster whose admin kubeconfig is in
// $PIPEOPS_TEST_KUBECONFIG (scripts/test.sh starts one for the whole run);
// otherwise it starts one FULL cluster per test process, stopped by Main
// after m.Run (and, as a safety net, by a watcher when the process exits).
// Every call gets its own fresh namespace, deleted when the test ends.
// PrivateCluster starts a dedicated cluster whose API server a test may stop
// and restart.
//
// When the binaries are missing the test fails under CI=true, with what to
// run, and is skipped otherwise.
package kubetest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// EnvKubeconfig names the variable that points at a running cluster to reuse.
const EnvKubeconfig = "PIPEOPS_TEST_KUBECONFIG"

// EnvBin overrides the folder of the Kubernetes test binaries.
const EnvBin = "PIPEOPS_TEST_K8S_BIN"

// Env is one test's view of a real cluster.
type Env struct {
	Config     *rest.Config         // admin (system:masters); copy before changing it
	Kubeconfig string               // path of the admin kubeconfig
	Client     kubernetes.Interface // admin clientset
	Namespace  string               // fresh for this test; deleted in t.Cleanup
	Bin        string               // folder with kubectl, helm, ... (scripts/k8s/build.sh)
	Full       bool                 // kcm + scheduler + kwok: Deployments get Ready pods
	Dir        string               // cluster folder (pki, logs, cluster.env); "" when unknown
}

// shared is the one cluster of this test process.
var shared struct {
	mu       sync.Mutex
	done     bool
	err      error
	cl       *cluster
	startLog string
}

// cluster is a running (or reused) cluster, before per-test namespaces.
type cluster struct {
	kubeconfig string
	dir        string // set when this process started it
	full       bool
	bin        string
	owned      bool
}

// Main runs the tests and then stops the cluster this process started, if
// any. Call it from TestMain: func TestMain(m *testing.M) { kubetest.Main(m) }.
func Main(m *testing.M) {
	code := m.Run()
	shared.mu.Lock()
	if shared.cl != nil && shared.cl.owned {
		if out, err := runScript("stop", shared.cl.dir, nil); err != nil {
			fmt.Fprintf(os.Stderr, "kubetest: stop cluster: %v\n%s", err, out)
		}
		os.RemoveAll(shared.cl.dir)
	}
	shared.mu.Unlock()
	os.Exit(code)
}

// Cluster returns the shared cluster with a fresh namespace for this test.
func Cluster(t testing.TB) *Env {
	t.Helper()
	cl := sharedCluster(t)
	return newEnv(t, cl, true)
}

// RequireFull returns the shared cluster like Cluster, and fails (CI) or
// skips the test when it has no controller-manager, scheduler and Ready node.
func RequireFull(t testing.TB) *Env {
	t.Helper()
	env := Cluster(t)
	if !env.Full {
		missing(t, "the test cluster at "+env.Kubeconfig+" has no Ready node; start it with FULL=1 scripts/k8s/cluster.sh start DIR")
	}
	return env
}

func sharedCluster(t testing.TB) *cluster {
	t.Helper()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if !shared.done {
		shared.done = true
		shared.cl, shared.startLog, shared.err = findOrStart()
		if shared.startLog != "" {
			fmt.Fprint(os.Stderr, "kubetest: ", shared.startLog)
		}
	}
	if shared.err != nil {
		if errBinaries(shared.err) {
			missing(t, shared.err.Error())
		}
		t.Fatalf("kubetest: %v", shared.err)
	}
	return shared.cl
}

// binariesMissing marks errors that mean "build the binaries first".
type binariesMissing struct{ msg string }

func (e binariesMissing) Error() string { return e.msg }

func errBinaries(err error) bool { _, ok := err.(binariesMissing); return ok }

// missing fails under CI=true and skips elsewhere: no silent skips in CI.
func missing(t testing.TB, why string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("kubetest: %s (CI=true, so this is a failure, not a skip)", why)
	}
	t.Skipf("kubetest: %s", why)
}

func findOrStart() (*cluster, string, error) {
	if kc := os.Getenv(EnvKubeconfig); kc != "" {
		if _, err := os.Stat(kc); err != nil {
			return nil, "", fmt.Errorf("%s=%s: %w", EnvKubeconfig, kc, err)
		}
		cl := &cluster{kubeconfig: kc, dir: filepath.Dir(kc)}
		cl.bin, _ = binDir()
		if env, err := readClusterEnv(cl.dir); err == nil {
			cl.full = env["FULL"] == "1"
			if cl.bin == "" {
				cl.bin = env["BIN"]
			}
		} else {
			cl.dir = ""
			cl.full = hasReadyNode(kc)
		}
		return cl, "", nil
	}
	bin, err := binDir()
	if err != nil {
		return nil, "", err
	}
	dir, err := os.MkdirTemp("", "pipeops-kubetest-")
	if err != nil {
		return nil, "", err
	}
	out, err := startCluster(dir, []string{"FULL=1", "BIN=" + bin})
	if err != nil {
		os.RemoveAll(dir)
		return nil, out, fmt.Errorf("start test cluster: %w\n%s", err, out)
	}
	return &cluster{kubeconfig: filepath.Join(dir, "admin.kubeconfig"), dir: dir, full: true, bin: bin, owned: true}, out, nil
}

// startCluster runs cluster.sh start, once more on failure: ports are picked
// free but another cluster starting at the same moment may take one first.
func startCluster(dir string, env []string) (string, error) {
	env = append(env, "OWNER_PID="+strconv.Itoa(os.Getpid()))
	out, err := runScript("start", dir, env)
	if err != nil {
		var again string
		again, err = runScript("start", dir, env)
		out += "\nretrying:\n" + again
	}
	return out, err
}

// binDir finds the Kubernetes test binaries and checks the ones a cluster needs.
func binDir() (string, error) {
	bin := os.Getenv(EnvBin)
	if bin == "" {
		root, err := repoRoot()
		if err != nil {
			return "", err
		}
		out, err := exec.Command(filepath.Join(root, "scripts/k8s/build.sh"), "--print-bin").Output()
		if err != nil {
			return "", fmt.Errorf("scripts/k8s/build.sh --print-bin: %w", err)
		}
		bin = strings.TrimSpace(string(out))
	}
	for _, b := range []string{"etcd", "kube-apiserver", "kubectl", "kube-controller-manager", "kube-scheduler", "kwok", "kwok-stages.yaml", "kwok-crds.yaml"} {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			return "", binariesMissing{fmt.Sprintf("Kubernetes test binary %s is missing in %s: run scripts/k8s/build.sh (about 6 min cold, seconds warm)", b, bin)}
		}
	}
	return bin, nil
}

// repoRoot walks up from the working directory to the folder with scripts/k8s/cluster.sh.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "scripts/k8s/cluster.sh")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("scripts/k8s/cluster.sh not found above the working directory")
		}
		dir = parent
	}
}

// runScript runs scripts/k8s/cluster.sh CMD DIR with extra environment.
func runScript(cmd, dir string, env []string) (string, error) {
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	c := exec.Command(filepath.Join(root, "scripts/k8s/cluster.sh"), cmd, dir)
	c.Env = append(os.Environ(), env...)
	var buf bytes.Buffer
	c.Stdout, c.Stderr = &buf, &buf
	err = c.Run()
	return buf.String(), err
}

func readClusterEnv(dir string) (map[string]string, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cluster.env"))
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			m[k] = v
		}
	}
	return m, nil
}

func hasReadyNode(kubeconfig string) bool {
	cfg, err := loadConfig(kubeconfig)
	if err != nil {
		return false
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return false
	}
	for _, n := range nodes.Items {
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
				return true
			}
		}
	}
	return false
}

func loadConfig(kubeconfig string) (*rest.Config, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", kubeconfig, err)
	}
	// Tests create many objects quickly; client-side throttling only slows them.
	cfg.QPS, cfg.Burst = 100, 200
	return cfg, nil
}

var nsUnsafe = regexp.MustCompile(`[^a-z0-9-]+`)

// newEnv creates the test's namespace on cl; deleteNS deletes it at cleanup
// (a private cluster is thrown away whole instead).
func newEnv(t testing.TB, cl *cluster, deleteNS bool) *Env {
	t.Helper()
	cfg, err := loadConfig(cl.kubeconfig)
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatalf("kubetest: clientset: %v", err)
	}
	prefix := strings.Trim(nsUnsafe.ReplaceAllString(strings.ToLower(t.Name()), "-"), "-")
	if len(prefix) > 40 {
		prefix = strings.Trim(prefix[:40], "-")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ns, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		GenerateName: "t-" + prefix + "-",
		Labels:       map[string]string{"pipeops.io/test": "true"},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("kubetest: create test namespace: %v", err)
	}
	t.Cleanup(func() {
		if !deleteNS {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		// Without kcm (FULL=0) the namespace stays Terminating; harmless.
		_ = cs.CoreV1().Namespaces().Delete(ctx, ns.Name, metav1.DeleteOptions{})
	})
	return &Env{Config: cfg, Kubeconfig: cl.kubeconfig, Client: cs, Namespace: ns.Name, Bin: cl.bin, Full: cl.full, Dir: cl.dir}
}

// Kubectl runs the test cluster's kubectl with the admin kubeconfig and
// returns its combined output; it fails the test on error.
func (e *Env) Kubectl(t testing.TB, args ...string) string {
	t.Helper()
	if e.Bin == "" {
		t.Fatal("kubetest: kubectl location unknown; set " + EnvBin)
	}
	c := exec.Command(filepath.Join(e.Bin, "kubectl"), append([]string{"--kubeconfig", e.Kubeconfig}, args...)...)
	out, err := c.CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}
