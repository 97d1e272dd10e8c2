package ha_test

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/ha"
	"github.com/pipeops/pipeops-vm-agent/internal/kube"
	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

func TestMain(m *testing.M) { kubetest.Main(m) }

// Short lease settings for tests: 2 s lease, 1.5 s renew deadline, 250 ms retries.
const (
	testLease = 2 * time.Second
	testRenew = 1500 * time.Millisecond
	testRetry = 250 * time.Millisecond
)

// haCluster bootstraps the agent's objects with HA in the test's namespace
// and returns the namespace.
func haCluster(t *testing.T) (*kubetest.Env, string) {
	t.Helper()
	env := kubetest.Cluster(t)
	n := kube.Names{Namespace: env.Namespace, ClusterRole: "pipeops-agent-" + env.Namespace, HA: true}
	if _, err := kube.Bootstrap(context.Background(), env.Client, n); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = kube.RemoveIdentity(context.Background(), env.Client, n) })
	return env, env.Namespace
}

// flaky is a transport that fails every request while down is set: an API
// server this agent cannot reach.
type flaky struct {
	rt   http.RoundTripper
	down atomic.Bool
}

func (f *flaky) RoundTrip(r *http.Request) (*http.Response, error) {
	if f.down.Load() {
		return nil, errors.New("injected: API server unreachable")
	}
	return f.rt.RoundTrip(r)
}

// asAgent is a clientset with a fresh token of the agent's ServiceAccount
// only, so the tests check the HA Role, not admin rights.
func asAgent(t *testing.T, env *kubetest.Env, ns string) (kubernetes.Interface, *flaky) {
	t.Helper()
	tr, err := env.Client.CoreV1().ServiceAccounts(ns).CreateToken(context.Background(), kube.ServiceAccountName,
		&authnv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	f := &flaky{}
	cfg := &rest.Config{Host: env.Config.Host, TLSClientConfig: rest.TLSClientConfig{CAData: env.Config.CAData, CAFile: env.Config.CAFile},
		BearerToken: tr.Status.Token, Timeout: 2 * time.Second,
		WrapTransport: func(rt http.RoundTripper) http.RoundTripper { f.rt = rt; return f }}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cs, f
}

// candidate is one Elector running in the test, with what it observed.
type candidate struct {
	e      *ha.Elector
	net    *flaky
	cancel context.CancelFunc
	done   chan error
	leads  atomic.Int32 // terms started
	inTerm atomic.Bool
	// watch, when set, is asked at the start of each term whether that
	// candidate still considered itself active; sawActive records yes.
	watch     atomic.Pointer[candidate]
	sawActive atomic.Bool
}

func start(t *testing.T, env *kubetest.Env, ns, name string, overlap *atomic.Int32) *candidate {
	t.Helper()
	cs, f := asAgent(t, env, ns)
	e, err := ha.New(ha.Options{Clientset: func(context.Context) (kubernetes.Interface, error) { return cs, nil },
		Namespace: ns, Identity: name, LeaseDuration: testLease, RenewDeadline: testRenew, RetryPeriod: testRetry})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &candidate{e: e, net: f, cancel: cancel, done: make(chan error, 1)}
	go func() {
		c.done <- e.Run(ctx, func(ctx context.Context) error {
			c.leads.Add(1)
			if w := c.watch.Load(); w != nil && w.e.MayAct() {
				c.sawActive.Store(true)
			}
			if overlap != nil && overlap.Add(1) > 1 {
				t.Errorf("%s started leading while another term was running", name)
			}
			c.inTerm.Store(true)
			<-ctx.Done()
			c.inTerm.Store(false)
			if overlap != nil {
				overlap.Add(-1)
			}
			return nil
		})
	}()
	t.Cleanup(func() { cancel(); <-c.done })
	return c
}

func leaders(cs ...*candidate) (n int, who *candidate) {
	for _, c := range cs {
		if c.inTerm.Load() {
			n++
			who = c
		}
	}
	return n, who
}

func TestExactlyOneOfThreeCandidatesLeadsAndAGracefulStopHandsOverAtOnce(t *testing.T) {
	t.Parallel()
	env, ns := haCluster(t)
	var overlap atomic.Int32
	a, b, c := start(t, env, ns, "node-a", &overlap), start(t, env, ns, "node-b", &overlap), start(t, env, ns, "node-c", &overlap)
	var first *candidate
	testbin.Eventually(t, 20*time.Second, "one leader", func() bool { n, w := leaders(a, b, c); first = w; return n == 1 })
	if !first.e.Active() {
		t.Fatal("the leader is not Active")
	}
	st := first.e.Status(context.Background())
	if st.Role != apitype.HALeader || st.Leader != first.e.Identity() || st.LeaderSince.IsZero() {
		t.Fatalf("leader status = %+v", st)
	}
	testbin.Eventually(t, 10*time.Second, "three candidates listed", func() bool {
		return len(a.e.Status(context.Background()).Candidates) == 3
	})

	stopped := time.Now()
	first.cancel()
	if err := <-first.done; err != nil {
		t.Fatalf("Run after a graceful stop = %v; want nil", err)
	}
	first.done <- nil // for the cleanup
	var next *candidate
	testbin.Eventually(t, 10*time.Second, "a standby leads", func() bool { n, w := leaders(a, b, c); next = w; return n == 1 && w != first })
	// Released at once: a standby takes over at its next retry, long
	// before the 2 s lease could have run out.
	t.Logf("graceful handover from %s to %s in %s (retry period %s)", first.e.Identity(), next.e.Identity(),
		time.Since(stopped).Round(time.Millisecond), testRetry)
	if first.e.Active() {
		t.Fatal("a stopped leader is still Active")
	}
}

func TestStepDownEndsTheTermAndAStandbyTakesOver(t *testing.T) {
	t.Parallel()
	env, ns := haCluster(t)
	var overlap atomic.Int32
	a, b := start(t, env, ns, "node-a", &overlap), start(t, env, ns, "node-b", &overlap)
	var first *candidate
	testbin.Eventually(t, 20*time.Second, "one leader", func() bool { n, w := leaders(a, b); first = w; return n == 1 })
	standby := a
	if first == a {
		standby = b
	}
	if err := standby.e.StepDown(); !errors.Is(err, ha.ErrNotLeader) {
		t.Fatalf("StepDown on a standby = %v; want ErrNotLeader", err)
	}
	if err := first.e.StepDown(); err != nil {
		t.Fatal(err)
	}
	if err := <-first.done; !errors.Is(err, ha.ErrTermEnded) {
		t.Fatalf("Run after a step-down = %v; want ErrTermEnded", err)
	}
	first.done <- nil
	testbin.Eventually(t, 10*time.Second, "the standby leads", func() bool { return standby.inTerm.Load() })
}

func TestALeaderCutOffFromTheAPIServerStopsActingBeforeAnotherCanTakeItsLeaseAndHoldsItsLinkUntilItAnswers(t *testing.T) {
	t.Parallel()
	env, ns := haCluster(t)
	// No overlap check here: holding its link, the cut-off leader stays
	// in its term while the other leads (the control plane arbitrates).
	a, b := start(t, env, ns, "node-a", nil), start(t, env, ns, "node-b", nil)
	var first *candidate
	testbin.Eventually(t, 20*time.Second, "one leader", func() bool { n, w := leaders(a, b); first = w; return n == 1 })
	other := a
	if first == a {
		other = b
	}
	// The moment the other candidate starts leading, it asks whether the
	// cut-off leader still acted on the cluster.
	other.watch.Store(first)
	cut := time.Now()
	first.net.down.Store(true)
	testbin.Eventually(t, 5*time.Second, "the cut-off leader stops acting and dialling", func() bool {
		return !first.e.MayAct() && !first.e.MayDial()
	})
	stopped := time.Since(cut)
	testbin.Eventually(t, 10*time.Second, "the other candidate leads", func() bool { return other.inTerm.Load() })
	t.Logf("cut-off leader stopped acting after %s; the other took over after %s", stopped.Round(time.Millisecond), time.Since(cut).Round(time.Millisecond))
	if other.sawActive.Load() {
		t.Fatal("the cut-off leader could still act on the cluster when the other candidate started leading")
	}
	// It holds its link (the control plane keeps sight of the cluster; a
	// new leader's connection supersedes it there) but may not dial.
	if !first.e.Holding() || !first.e.Active() || first.e.MayDial() || !first.inTerm.Load() {
		t.Fatalf("cut-off leader: holding %v, active %v, may dial %v, in term %v; want holding its link, no dials",
			first.e.Holding(), first.e.Active(), first.e.MayDial(), first.inTerm.Load())
	}
	if st := first.e.Snapshot(); st.Role != apitype.HAHolding {
		t.Fatalf("cut-off leader's role = %q; want %q", st.Role, apitype.HAHolding)
	}
	first.net.down.Store(false)
	if err := <-first.done; !errors.Is(err, ha.ErrTermEnded) {
		t.Fatalf("Run once the API server answers again = %v; want ErrTermEnded", err)
	}
	first.done <- nil
	if first.e.Active() {
		t.Fatal("the old leader is still Active after its term ended")
	}
}

func TestTheIdentityIsWrittenByOneAgentAndAdoptedByAnotherThroughTheServiceAccount(t *testing.T) {
	t.Parallel()
	env, ns := haCluster(t)
	ctx := context.Background()
	writer, _ := asAgent(t, env, ns)
	reader, _ := asAgent(t, env, ns)
	if _, ok, err := ha.LoadIdentity(ctx, reader, ns); err != nil || ok {
		t.Fatalf("LoadIdentity before any registration = ok %v, %v; want none", ok, err)
	}
	id := ha.Identity{AgentID: "agent-1", ClusterID: "cl-1", ClusterUUID: "uuid-1", GatewayWSURL: "wss://gw.example/ws",
		ClusterToken: "tok", ClusterCAData: "Y2E=", CredentialsFingerprint: "fp", Secrets: map[string]string{"grafana_admin_password": "pw"},
		UpdatedBy: "node-a"}
	if err := ha.SaveIdentity(ctx, writer, ns, id); err != nil {
		t.Fatal(err)
	}
	got, ok, err := ha.LoadIdentity(ctx, reader, ns)
	if err != nil || !ok || !got.Same(id) {
		t.Fatalf("LoadIdentity = %+v, %v, %v; want %+v", got, ok, err, id)
	}
	// The Role names the identity Secret only: the token Secret and any
	// other Secret of the namespace stay out of reach.
	if _, err := reader.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("listing Secrets as the agent = %v; want forbidden", err)
	}
	if _, err := reader.CoreV1().Secrets(ns).Get(ctx, "other", metav1.GetOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("reading another Secret as the agent = %v; want forbidden", err)
	}
}

func TestLeaseSettingsWhoseRenewDeadlineIsNotShorterThanTheLeaseAreRefused(t *testing.T) {
	for _, tc := range []struct{ lease, renew, retry time.Duration }{
		{10 * time.Second, 10 * time.Second, time.Second},
		{10 * time.Second, 7 * time.Second, 7 * time.Second},
		{1500 * time.Millisecond, time.Second, 100 * time.Millisecond},
	} {
		if err := ha.CheckLease(tc.lease, tc.renew, tc.retry); err == nil {
			t.Errorf("CheckLease(%s, %s, %s) = nil; want an error", tc.lease, tc.renew, tc.retry)
		}
	}
	if err := ha.CheckLease(ha.DefaultLeaseDuration, ha.DefaultRenewDeadline, ha.DefaultRetryPeriod); err != nil {
		t.Errorf("the defaults are refused: %v", err)
	}
	if ha.SecretName != kube.HASecretName || ha.LeaseName != kube.HALeaseName || ha.CandidateLabel != kube.HALeaseLabel {
		t.Error("ha and kube disagree on the names of the HA objects (the Role grants kube's)")
	}
}

func TestRemoveIdentityDeletesTheHARoleTheSharedIdentityAndTheLeases(t *testing.T) {
	t.Parallel()
	env, ns := haCluster(t)
	ctx := context.Background()
	a := start(t, env, ns, "node-a", nil)
	testbin.Eventually(t, 20*time.Second, "a leader and its candidate lease", func() bool {
		return a.inTerm.Load() && len(a.e.Status(ctx).Candidates) == 1
	})
	cs, _ := asAgent(t, env, ns)
	if err := ha.SaveIdentity(ctx, cs, ns, ha.Identity{AgentID: "a", ClusterID: "c", ClusterToken: "tok"}); err != nil {
		t.Fatal(err)
	}
	a.cancel()
	<-a.done
	a.done <- nil
	removed, err := kube.RemoveIdentity(ctx, env.Client, kube.Names{Namespace: ns, ClusterRole: "pipeops-agent-" + ns})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"role " + ns + "/" + kube.HARoleName, "rolebinding " + ns + "/" + kube.HARoleName,
		"secret " + ns + "/" + ha.SecretName, "lease " + ns + "/" + ha.LeaseName, "lease " + ns + "/" + ha.CandidatePrefix + "node-a"} {
		if !slices.Contains(removed, want) {
			t.Errorf("RemoveIdentity removed %q; want %q among them", removed, want)
		}
	}
	if _, err := env.Client.CoreV1().Secrets(ns).Get(ctx, ha.SecretName, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("the shared identity (with its copy of the token) is still there: %v", err)
	}
}
