// Package kube gives the agent its access to the local Kubernetes cluster in
// host mode: it discovers the admin kubeconfig (configured path, then
// PIPEOPS_KUBECONFIG, KUBECONFIG and the k3s, rke2, kubeadm and microk8s
// defaults), uses that admin identity only to bootstrap the agent's own
// ServiceAccount and RBAC (protocol.md §14.3) and for Helm, mints the token
// sent as k8s_service_token, probes the API server and reports the result
// to health, and keeps the cluster figures for heartbeats. Everything the
// control plane asks for runs as the ServiceAccount (ProxyConfig), never
// as the admin.
package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/config"
	"github.com/pipeops/pipeops-vm-agent/internal/health"
	"github.com/pipeops/pipeops-vm-agent/internal/logging"
)

// Option adjusts a Manager.
type Option func(*Manager)

// WithHealth reports the health.Kubernetes condition to tr.
func WithHealth(tr *health.Tracker) Option { return func(m *Manager) { m.health = tr } }

// WithMonitoringNamespace also reconciles Role pipeops-agent-monitoring-proxy
// (services/proxy) in ns; "" leaves it out. Call with the monitoring
// namespace when monitoring is enabled.
func WithMonitoringNamespace(ns string) Option {
	return func(m *Manager) { m.names.MonitoringNamespace = ns }
}

// WithProtectedNamespaces adds namespaces where the ServiceAccount may only
// read (kubernetes.protected_namespaces, the monitoring components'
// namespaces), besides ProtectedNamespaces' fixed set.
func WithProtectedNamespaces(ns ...string) Option {
	return func(m *Manager) { m.extraProtected = append(m.extraProtected, ns...) }
}

// WithNames places the agent's objects elsewhere (tests on a shared cluster).
func WithNames(n Names) Option { return func(m *Manager) { m.names = n.withDefaults() } }

// WithHA makes the bootstrap grant the ServiceAccount the Role for leader
// election and create the shared identity Secret (ha.enabled). Give it
// after WithNames.
func WithHA() Option { return func(m *Manager) { m.names.HA = true } }

// WithWellKnownKubeconfigs replaces WellKnownKubeconfigs (tests).
func WithWellKnownKubeconfigs(c []Candidate) Option { return func(m *Manager) { m.wellKnown = c } }

// WithClock injects the clock that drives token renewal and caches (tests).
func WithClock(now func() time.Time) Option { return func(m *Manager) { m.now = now } }

// WithHeartbeatInterval is how often the heartbeat asks for telemetry
// (default 30 s): the interval this machine's CPU rate covers.
func WithHeartbeatInterval(d time.Duration) Option { return func(m *Manager) { m.heartbeat = d } }

// WithIntervals sets the probe interval while healthy, the retry interval
// while failing, and how long to wait for the token controller to fill the
// token Secret before falling back to TokenRequest. Zero keeps a default.
func WithIntervals(probe, retry, tokenWait time.Duration) Option {
	return func(m *Manager) {
		if probe > 0 {
			m.probeEvery = probe
		}
		if retry > 0 {
			m.retryEvery = retry
		}
		if tokenWait > 0 {
			m.tokenWait = tokenWait
		}
	}
}

// Manager owns the agent's view of the cluster. Build it with New, run it
// with Run; the accessors are safe for concurrent use at any time.
type Manager struct {
	cfg        config.Kubernetes
	getenv     func(string) string
	log        *slog.Logger
	health     *health.Tracker
	names      Names
	wellKnown  []Candidate
	now        func() time.Time
	probeEvery time.Duration
	retryEvery time.Duration
	tokenWait  time.Duration
	reconcile  time.Duration
	metrics    *metrics

	extraProtected []string

	ready     chan struct{} // closed when credentials are first set (saved or minted)
	readyOnce sync.Once
	csReady   chan struct{} // closed once the ServiceAccount clientset can be used
	csOnce    sync.Once
	probed    chan struct{} // closed after the first probe
	probeOnce sync.Once

	mu      sync.Mutex
	source  Candidate
	admin   *rest.Config
	adminCS kubernetes.Interface
	base    *rest.Config // server + CA, no credentials
	saCS    kubernetes.Interface
	cred    creds
	// proxyCfg is ProxyConfig's answer for proxyOf (base and token): one
	// shared value per identity, not a copy per proxied request.
	proxyCfg    *rest.Config
	proxyOf     proxyKey
	credWaiters []chan struct{}
	reachable   bool
	version     string
	lastErr     string
	checkedAt   time.Time
	reconciled  time.Time
	tokenMode   string // TokenFromSecret until the token controller fails to fill the Secret
	tel         *telemetry
	heartbeat   time.Duration
	binder      *binder
	probeErr    string // why the last probe failed

	store       CredentialStore
	savedServer string // API server of the saved credentials
	lastSaved   Saved
	provisional bool // m.cred came from the store and has not been checked yet
	nudge       chan struct{}
}

// New builds a Manager. It does no I/O and starts nothing. getenv is
// os.Getenv outside tests; reg may be nil.
func New(cfg config.Kubernetes, getenv func(string) string, log *slog.Logger, reg prometheus.Registerer, opts ...Option) *Manager {
	m := &Manager{
		cfg: cfg, getenv: getenv, log: log, wellKnown: WellKnownKubeconfigs, now: time.Now,
		names:      defaultNames(cfg.Namespace),
		probeEvery: 10 * time.Second, retryEvery: 2 * time.Second, tokenWait: 20 * time.Second,
		reconcile: 10 * time.Minute, ready: make(chan struct{}), csReady: make(chan struct{}), probed: make(chan struct{}),
		tokenMode: TokenFromSecret, nudge: make(chan struct{}, 1),
	}
	for _, o := range opts {
		o(m)
	}
	m.metrics = newMetrics(reg)
	m.loadSaved()
	return m
}

// defaultNames places the objects for the configured namespace. An agent in
// a namespace other than pipeops-system gets its own ClusterRole and binding
// (pipeops-agent-<ns>), so two agents in one cluster never fight over the
// binding's subject.
func defaultNames(ns string) Names {
	n := Names{Namespace: ns}.withDefaults()
	if n.Namespace != DefaultNamespace {
		n.ClusterRole = ClusterRoleName + "-" + n.Namespace
	}
	return n
}

// Run discovers the kubeconfig, then probes, bootstraps and keeps the token
// fresh until ctx ends. Failures are retried and reported to health, never
// returned: the agent keeps running while the API server is down.
func (m *Manager) Run(ctx context.Context) error {
	m.setHealth(false, "looking for a kubeconfig")
	for m.AdminConfig() == nil {
		admin, src, err := Discover(Candidates(m.cfg, m.getenv, m.wellKnown))
		if err == nil {
			m.setAdmin(admin, src)
			m.forgetOtherCluster(admin.Host)
			m.log.Info("using kubeconfig", logging.KeyPath, src.Path, logging.KeySource, src.Source, logging.KeyURL, admin.Host)
			break
		}
		m.fail(err.Error())
		if !sleep(ctx, 30*time.Second) {
			return nil
		}
	}
	for {
		ok := m.step(ctx)
		wait := m.probeEvery
		if !ok {
			wait = m.retryEvery
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-m.nudge:
			t.Stop()
		case <-t.C:
		}
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func (m *Manager) setAdmin(admin *rest.Config, src Candidate) {
	admin = rest.CopyConfig(admin)
	admin.UserAgent = "pipeops-agent"
	if admin.QPS == 0 {
		admin.QPS, admin.Burst = 20, 40
	}
	cs, err := kubernetes.NewForConfig(admin)
	base := saBase(admin)
	sa := rest.CopyConfig(base)
	sa.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { return &tokenTransport{token: m.token, next: rt} }
	saCS, err2 := kubernetes.NewForConfig(sa)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.source, m.admin, m.base = src, admin, base
	if err == nil && err2 == nil {
		m.adminCS, m.saCS = cs, saCS
	}
	m.clientsetReadyLocked()
}

// clientsetReadyLocked opens WaitClientset once there is both a clientset
// (the kubeconfig was found) and a token (saved or minted).
func (m *Manager) clientsetReadyLocked() {
	if m.saCS != nil && m.cred.token != "" {
		m.csOnce.Do(func() { close(m.csReady) })
	}
}

func (m *Manager) token() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cred.token
}

// step is one probe-and-reconcile round; it reports whether all is well.
func (m *Manager) step(ctx context.Context) bool {
	m.mu.Lock()
	cs := m.adminCS
	m.mu.Unlock()
	if cs == nil {
		m.fail("cannot build a client from the kubeconfig")
		return false
	}
	v, err := probe(ctx, cs)
	if err != nil {
		m.unreachable(err)
		m.probeOnce.Do(func() { close(m.probed) })
		return false
	}
	m.mu.Lock()
	m.reachable, m.version, m.checkedAt = true, v, m.now()
	due := m.reconciled.IsZero() || m.now().Sub(m.reconciled) >= m.reconcile
	m.mu.Unlock()
	m.probeOnce.Do(func() { close(m.probed) })
	m.metrics.up.Set(1)

	if due {
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		n, err := Bootstrap(rctx, cs, m.names)
		cancel()
		if err != nil {
			m.fail("bootstrap of the agent's ServiceAccount and RBAC failed: " + err.Error())
			return false
		}
		if n > 0 {
			m.log.Info("reconciled the agent's ServiceAccount and RBAC", logging.KeyCount, n, logging.KeyNamespace, m.names.Namespace)
			m.metrics.reconciled.Add(float64(n))
		}
		m.mu.Lock()
		m.reconciled = m.now()
		m.mu.Unlock()
	}
	m.startBinder(ctx, cs)
	if err := m.ensureCredentials(ctx); err != nil {
		m.fail("ServiceAccount token: " + err.Error())
		return false
	}
	m.startTelemetry(ctx)
	m.mu.Lock()
	m.lastErr = ""
	m.mu.Unlock()
	m.setHealth(true, "")
	return true
}

// probe asks /readyz and /version with the admin identity.
func probe(ctx context.Context, cs kubernetes.Interface) (string, error) {
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	rc := cs.Discovery().RESTClient()
	if body, err := rc.Get().AbsPath("/readyz").Do(pctx).Raw(); err != nil {
		return "", readyzError(body, err)
	}
	raw, err := rc.Get().AbsPath("/version").Do(pctx).Raw()
	if err != nil {
		return "", err
	}
	var info struct {
		GitVersion string `json:"gitVersion"`
	}
	if err := json.Unmarshal(raw, &info); err != nil {
		return "", fmt.Errorf("decode /version: %w", err)
	}
	if info.GitVersion == "" {
		return "", errors.New("API server reported no version")
	}
	return info.GitVersion, nil
}

// readyzError turns a failed /readyz into one short line: the names of the
// failing checks, not the whole 40-line report.
func readyzError(body []byte, err error) error {
	var failed []string
	for _, line := range strings.Split(string(body), "\n") {
		if name, ok := strings.CutPrefix(line, "[-]"); ok {
			failed = append(failed, strings.TrimSuffix(strings.TrimSuffix(name, " failed: reason withheld"), " failed"))
		}
	}
	if len(failed) > 0 {
		return &notReadyError{checks: strings.Join(failed, ", ")}
	}
	return err
}

// notReadyError is an API server that answers but fails /readyz.
type notReadyError struct{ checks string }

func (e *notReadyError) Error() string { return "/readyz failed: " + e.checks }

func (m *Manager) unreachable(err error) {
	reason := "API server unreachable: " + err.Error()
	if nr := (*notReadyError)(nil); errors.As(err, &nr) {
		reason = "API server not ready: " + err.Error()
	}
	m.mu.Lock()
	m.reachable, m.checkedAt, m.probeErr = false, m.now(), reason
	m.mu.Unlock()
	m.metrics.up.Set(0)
	m.metrics.probeFailures.Inc()
	m.fail(reason)
}

// fail records a failure reason for health, status and the log (on change only).
func (m *Manager) fail(reason string) {
	m.mu.Lock()
	changed := m.lastErr != reason
	m.lastErr = reason
	m.mu.Unlock()
	if changed {
		m.log.Warn("kubernetes not ready", logging.KeyErr, reason)
	}
	m.setHealth(false, reason)
}

func (m *Manager) setHealth(ok bool, reason string) {
	if m.health != nil {
		m.health.Set(health.Kubernetes, ok, reason)
	}
}

// AdminConfig is the discovered admin identity, for bootstrap and Helm
// only; nil until a kubeconfig is found. The caller gets its own copy.
func (m *Manager) AdminConfig() *rest.Config {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.admin == nil {
		return nil
	}
	return rest.CopyConfig(m.admin)
}

// ProxyConfig is the ServiceAccount identity (server, CA and the current
// token; never the admin's credentials) for proxied calls. nil until the
// first token is minted. Ask again per request: the token may be re-minted,
// and then the answer is a new value. The value is shared by every caller
// until then: treat it as read-only (rest.CopyConfig before changing it).
func (m *Manager) ProxyConfig() *rest.Config {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.base == nil || m.cred.token == "" {
		return nil
	}
	if k := (proxyKey{m.base, m.cred.token, m.binder}); m.proxyCfg == nil || m.proxyOf != k {
		c := withToken(m.base, m.cred.token)
		if b := m.binder; b != nil {
			c.WrapTransport = func(rt http.RoundTripper) http.RoundTripper {
				return &namespaceCreateHook{next: rt, bind: b.bindNow, log: m.log}
			}
		}
		m.proxyCfg, m.proxyOf = c, k
	}
	return m.proxyCfg
}

// proxyKey is what ProxyConfig's value is built from.
type proxyKey struct {
	base   *rest.Config
	token  string
	binder *binder
}

// ProtectedNamespaces are where the ServiceAccount may only read.
func (m *Manager) ProtectedNamespaces() map[string]bool {
	return ProtectedNamespaces(m.names, m.extraProtected...)
}

// startBinder starts granting the workload role namespace by namespace,
// once, after the first good bootstrap (the ClusterRole it binds exists).
func (m *Manager) startBinder(ctx context.Context, admin kubernetes.Interface) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.binder != nil {
		return
	}
	m.binder = newBinder(admin, m.Clientset, m.names, m.ProtectedNamespaces(), m.log.With("part", "namespaces"))
	go m.binder.run(ctx)
}

// Clientset is a clientset with the ServiceAccount identity, for informers
// (Ingresses, Services, EndpointSlices, nodes, pods). It always sends the
// current token, so it survives re-minting. nil until the first token.
func (m *Manager) Clientset() kubernetes.Interface {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cred.token == "" || m.saCS == nil {
		return nil
	}
	return m.saCS
}

// WaitClientset blocks until Clientset is available or ctx ends.
func (m *Manager) WaitClientset(ctx context.Context) (kubernetes.Interface, error) {
	select {
	case <-m.csReady:
		return m.Clientset(), nil
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for the Kubernetes ServiceAccount: %w", ctx.Err())
	}
}

// Version is the API server's GitVersion. It waits for the first probe and
// returns an error while the API server is unreachable; it never guesses.
func (m *Manager) Version(ctx context.Context) (string, error) {
	select {
	case <-m.probed:
	case <-ctx.Done():
		return "", fmt.Errorf("kubernetes version: %w", ctx.Err())
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.reachable {
		return "", errors.New("kubernetes version unknown: " + m.lastErr)
	}
	return m.version, nil
}

// Telemetry is the heartbeat's cluster figures, from informer caches and,
// for the node the agent runs on, /proc (recomputed at most every 15 s,
// or every heartbeat interval when that is shorter). It fails until the
// caches synced once.
func (m *Manager) Telemetry(ctx context.Context) (Telemetry, error) {
	m.mu.Lock()
	tel, v := m.tel, m.version
	m.mu.Unlock()
	if tel == nil {
		return Telemetry{}, errors.New("kubernetes telemetry not started: " + m.reason())
	}
	t, err := tel.get(ctx)
	if err != nil {
		return Telemetry{}, err
	}
	t.K8sVersion = v
	return t, nil
}

func (m *Manager) reason() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.lastErr != "" {
		return m.lastErr
	}
	return "waiting for the first probe"
}

// Status is the Kubernetes section of the local status snapshot.
func (m *Manager) Status(ctx context.Context) apitype.KubeStatus {
	m.mu.Lock()
	st := apitype.KubeStatus{Reachable: m.reachable, Kubeconfig: m.source.Path, Version: m.version,
		LastError: m.lastErr, CheckedAt: m.checkedAt}
	if m.admin != nil {
		st.Server = m.admin.Host
	}
	m.mu.Unlock()
	if t, err := m.Telemetry(ctx); err == nil {
		st.Nodes, st.Pods, st.CPUUsage, st.MemoryUsage = t.Nodes, t.Pods, t.CPUUsage, t.MemoryUsage
		st.CPUSource, st.MemorySource = t.CPUSource, t.MemorySource
	}
	return st
}

func (m *Manager) startTelemetry(ctx context.Context) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.tel != nil || m.saCS == nil {
		return
	}
	// Figures are recomputed at most every 15 s, and at least once per
	// heartbeat; this machine's CPU is a rate over a heartbeat interval.
	every, ttl := m.heartbeat, 15*time.Second
	if every <= 0 {
		every = 30 * time.Second
	}
	ttl = min(ttl, every)
	m.tel = newTelemetry(m.saCS, m.now, ttl, every)
	m.tel.start(ctx)
}
