package monitor

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/client-go/rest"
)

// Settings are a Backend's serializable options: what the worker needs
// besides the cluster's credentials.
type Settings struct {
	// Components are the enabled releases, in install order.
	Components []Component `json:"components"`
	// Grafana enables Grafana inside the prometheus release.
	Grafana bool `json:"grafana,omitempty"`
	// GrafanaSubPath sets root_url and serve_from_sub_path (agent.grafana_sub_path).
	GrafanaSubPath bool `json:"grafana_sub_path,omitempty"`
	// APIURL is the control plane's base URL, the start of Grafana's root_url.
	APIURL string `json:"api_url,omitempty"`
	// ClusterDomain is the cluster's DNS domain for advertised URLs.
	ClusterDomain string `json:"cluster_domain,omitempty"`
	// ACMEEmail is the account e-mail of the letsencrypt ClusterIssuers.
	ACMEEmail string `json:"acme_email,omitempty"`
	// Profile is auto (from node allocatable), small, medium or large.
	Profile string `json:"profile,omitempty"`
	// ChartsDir, when set, is the only place charts are read from.
	ChartsDir string `json:"charts_dir,omitempty"`
	// CacheDir holds Helm's caches and registry config.
	CacheDir string `json:"cache_dir"`
	// Timeout bounds one Helm action; ReadyTimeout one release's readiness wait.
	Timeout      time.Duration `json:"timeout,omitempty"`
	ReadyTimeout time.Duration `json:"ready_timeout,omitempty"`
}

// KubeAccess is the admin identity of a rest.Config, as the worker gets it
// on stdin (never in argv or the environment).
type KubeAccess struct {
	Host            string `json:"host"`
	APIPath         string `json:"api_path,omitempty"`
	BearerToken     string `json:"bearer_token,omitempty"`
	BearerTokenFile string `json:"bearer_token_file,omitempty"`
	Username        string `json:"username,omitempty"`
	Password        string `json:"password,omitempty"`
	Insecure        bool   `json:"insecure,omitempty"`
	ServerName      string `json:"server_name,omitempty"`
	CertFile        string `json:"cert_file,omitempty"`
	KeyFile         string `json:"key_file,omitempty"`
	CAFile          string `json:"ca_file,omitempty"`
	CertData        []byte `json:"cert_data,omitempty"`
	KeyData         []byte `json:"key_data,omitempty"`
	CAData          []byte `json:"ca_data,omitempty"`
}

// KubeAccessFrom copies the identity of c. Credential plugins cannot cross
// a process boundary, so a config that uses one is refused.
func KubeAccessFrom(c *rest.Config) (KubeAccess, error) {
	if c.ExecProvider != nil || c.AuthProvider != nil {
		return KubeAccess{}, errors.New("the admin kubeconfig authenticates with a credential plugin, which the monitoring worker cannot use; " +
			"point kubernetes.kubeconfig at a kubeconfig with a client certificate or token (k3s, kubeadm and rke2 write one)")
	}
	t := c.TLSClientConfig
	return KubeAccess{Host: c.Host, APIPath: c.APIPath, BearerToken: c.BearerToken, BearerTokenFile: c.BearerTokenFile,
		Username: c.Username, Password: c.Password, Insecure: t.Insecure, ServerName: t.ServerName,
		CertFile: t.CertFile, KeyFile: t.KeyFile, CAFile: t.CAFile, CertData: t.CertData, KeyData: t.KeyData, CAData: t.CAData}, nil
}

// Config is the rest.Config of k.
func (k KubeAccess) Config() *rest.Config {
	return &rest.Config{Host: k.Host, APIPath: k.APIPath, BearerToken: k.BearerToken, BearerTokenFile: k.BearerTokenFile,
		Username: k.Username, Password: k.Password,
		TLSClientConfig: rest.TLSClientConfig{Insecure: k.Insecure, ServerName: k.ServerName, CertFile: k.CertFile,
			KeyFile: k.KeyFile, CAFile: k.CAFile, CertData: k.CertData, KeyData: k.KeyData, CAData: k.CAData}}
}

// WorkerRequest is the one JSON object a worker reads from stdin.
type WorkerRequest struct {
	Action    string            `json:"action"` // round or uninstall
	Settings  Settings          `json:"settings"`
	Kube      KubeAccess        `json:"kube"`
	ClusterID string            `json:"cluster_id,omitempty"`
	Secrets   map[string]string `json:"secrets,omitempty"`
	LogLevel  string            `json:"log_level,omitempty"`
}

// workerEvent is one NDJSON line a worker writes to stdout.
type workerEvent struct {
	Release *releaseEvent `json:"release,omitempty"`
	Secret  *secretEvent  `json:"secret,omitempty"`
	Done    *doneEvent    `json:"done,omitempty"`
}

type releaseEvent struct {
	Component string       `json:"component"`
	State     string       `json:"state"`
	Reason    string       `json:"reason,omitempty"`
	Info      *ReleaseInfo `json:"info,omitempty"`
}

type secretEvent struct {
	Key    string `json:"key"`
	Value  string `json:"value"`
	Origin string `json:"origin"`
}

type doneEvent struct {
	Result      Result `json:"result"`
	Error       string `json:"error,omitempty"`
	NoClusterID bool   `json:"no_cluster_id,omitempty"`
}

// Exec is the daemon's Backend: every round or uninstall runs in a fresh
// worker process (Path with Args, e.g. pipeops-agent-helm worker) that
// does the Helm work, streams its progress and exits. The request,
// credentials included, goes over stdin; the worker's JSON log lines on
// stderr are logged again here. Cancelling the context sends SIGTERM, and
// the worker gets SIGTERM too if the daemon dies.
type Exec struct {
	// Path is the worker. A bare name is looked up at every run (a package
	// upgrade may replace it): beside this executable, then in PATH.
	Path     string
	Args     []string
	Settings Settings
	// Kube returns the admin identity; it may block or fail until the
	// Kubernetes API is known.
	Kube     func(ctx context.Context) (*rest.Config, error)
	LogLevel string
	Log      *slog.Logger
}

// Round runs a worker for one round.
func (e *Exec) Round(ctx context.Context, s Sink) (Result, error) {
	return e.run(ctx, "round", s)
}

// Uninstall runs a worker that removes every release.
func (e *Exec) Uninstall(ctx context.Context, s Sink) error {
	_, err := e.run(ctx, "uninstall", s)
	return err
}

func (e *Exec) run(ctx context.Context, action string, s Sink) (Result, error) {
	cfg, err := e.Kube(ctx)
	var kube KubeAccess
	if err == nil {
		kube, err = KubeAccessFrom(cfg)
	}
	if err != nil {
		if err = NoAPI(action, err); action == "round" {
			Pending(s, e.Settings.Components, err)
		}
		return Result{}, err
	}
	secrets := map[string]string{}
	for _, k := range []string{SecretGrafanaPassword, SecretPrometheusPassword, SecretLokiPassword} {
		if v, ok := s.Secret(k); ok {
			secrets[k] = v
		}
	}
	req, err := json.Marshal(WorkerRequest{Action: action, Settings: e.Settings, Kube: kube, ClusterID: s.ClusterID(),
		Secrets: secrets, LogLevel: e.LogLevel})
	if err != nil {
		return Result{}, err
	}
	path := e.resolve()
	cmd := exec.CommandContext(ctx, path, e.Args...)
	cmd.Stdin = bytes.NewReader(req)
	// The worker needs no control-plane token: keep it out of its environment.
	cmd.Env = slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, "PIPEOPS_TOKEN=") || strings.HasPrefix(kv, "PIPEOPS_TOKEN_FILE=")
	})
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 30 * time.Second // then SIGKILL: Helm's own deadlines are minutes
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return Result{}, err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return Result{}, err
	}
	if err := cmd.Start(); err != nil {
		return Result{}, fmt.Errorf("start the monitoring worker %s: %w (it ships with pipeops-agent; reinstall the package if it is missing)", path, err)
	}
	tail := make(chan []string, 1)
	go func() { tail <- relayLogs(e.Log, stderr) }()
	done, readErr := readEvents(stdout, s)
	waitErr := cmd.Wait()
	lines := <-tail
	switch {
	case ctx.Err() != nil: // cancelled: whatever the worker said, it was stopped
		return Result{}, ctx.Err()
	case done != nil && done.Error == "":
		return done.Result, nil
	case done != nil:
		return done.Result, &workerError{msg: done.Error, noClusterID: done.NoClusterID}
	}
	why := readErr
	if why == nil {
		why = waitErr
	}
	if why == nil {
		why = errors.New("no result")
	}
	msg := fmt.Sprintf("the monitoring worker (%s %s) ended without a result: %v", path, strings.Join(e.Args, " "), why)
	if len(lines) > 0 {
		msg += "; its last output: " + strings.Join(lines, " | ")
	}
	return Result{}, errors.New(msg)
}

func (e *Exec) resolve() string {
	if strings.Contains(e.Path, "/") {
		return e.Path
	}
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), e.Path)
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p
		}
	}
	if p, err := exec.LookPath(e.Path); err == nil {
		return p
	}
	return e.Path // starting it fails with an error that says to reinstall
}

// workerError is a worker's error, which keeps ErrNoClusterID's identity.
type workerError struct {
	msg         string
	noClusterID bool
}

func (e *workerError) Error() string        { return e.msg }
func (e *workerError) Is(target error) bool { return e.noClusterID && target == ErrNoClusterID }

// readEvents applies the worker's events to s until its done line or EOF.
func readEvents(r io.Reader, s Sink) (*doneEvent, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 8<<20)
	for sc.Scan() {
		var ev workerEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			_, _ = io.Copy(io.Discard, r)
			return nil, fmt.Errorf("bad line from the worker: %w", err)
		}
		switch {
		case ev.Release != nil:
			s.SetRelease(ev.Release.Component, ev.Release.State, ev.Release.Reason, ev.Release.Info)
		case ev.Secret != nil:
			if _, err := s.PutSecret(ev.Secret.Key, ev.Secret.Value, ev.Secret.Origin); err != nil {
				_, _ = io.Copy(io.Discard, r)
				return nil, fmt.Errorf("persist the credential %s: %w", ev.Secret.Key, err)
			}
		case ev.Done != nil:
			_, _ = io.Copy(io.Discard, r)
			return ev.Done, nil
		}
	}
	return nil, sc.Err()
}

// relayLogs logs the worker's JSON log lines again through log, with their
// level and attributes. Other lines (client-go's API warnings, a panic) are
// logged as warnings, and the last of them are returned for the error of a
// worker that ended without a result.
func relayLogs(log *slog.Logger, r io.Reader) []string {
	var other []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var rec map[string]any
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil || rec["msg"] == nil {
			other = append(other, sc.Text())
			if len(other) > 8 {
				other = other[1:]
			}
			if log != nil && strings.TrimSpace(sc.Text()) != "" {
				log.Warn("monitoring worker output", "line", sc.Text())
			}
			continue
		}
		var level slog.Level
		if s, ok := rec["level"].(string); ok {
			_ = level.UnmarshalText([]byte(s))
		}
		msg, _ := rec["msg"].(string)
		attrs := make([]any, 0, 2*len(rec))
		for k, v := range rec {
			if k != "time" && k != "level" && k != "msg" {
				attrs = append(attrs, k, v)
			}
		}
		if log != nil {
			log.Log(context.Background(), level, msg, attrs...)
		}
	}
	return other
}

// ServeWorker is the worker's side of Exec: it reads the request from in,
// builds the Backend with newBackend, runs the action and writes its events
// and result to out as NDJSON. It returns an error only when no result could
// be written; the action's own failure is part of the result.
func ServeWorker(ctx context.Context, in io.Reader, out io.Writer,
	newBackend func(req WorkerRequest, kube *rest.Config) (Backend, error)) error {
	var req WorkerRequest
	dec := json.NewDecoder(io.LimitReader(in, 16<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return fmt.Errorf("read the worker request from stdin: %w (this command is run by pipeops-agent, not by hand)", err)
	}
	if req.Action != "round" && req.Action != "uninstall" {
		return fmt.Errorf("unknown worker action %q (want round or uninstall)", req.Action)
	}
	w := &wireSink{enc: json.NewEncoder(out), clusterID: req.ClusterID, secrets: req.Secrets}
	if w.secrets == nil {
		w.secrets = map[string]string{}
	}
	var (
		res Result
		err error
	)
	b, err := newBackend(req, req.Kube.Config())
	if err == nil {
		if req.Action == "round" {
			res, err = b.Round(ctx, w)
		} else {
			err = b.Uninstall(ctx, w)
		}
	}
	done := &doneEvent{Result: res}
	if err != nil {
		done.Error, done.NoClusterID = err.Error(), errors.Is(err, ErrNoClusterID)
	}
	return w.write(workerEvent{Done: done})
}

// wireSink is a Sink that writes to the daemon.
type wireSink struct {
	mu        sync.Mutex
	enc       *json.Encoder
	clusterID string
	secrets   map[string]string
}

func (w *wireSink) write(ev workerEvent) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.enc.Encode(ev)
}

func (w *wireSink) SetRelease(component, state, reason string, info *ReleaseInfo) {
	_ = w.write(workerEvent{Release: &releaseEvent{Component: component, State: state, Reason: reason, Info: info}})
}

func (w *wireSink) Secret(key string) (string, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	v := w.secrets[key]
	return v, v != ""
}

// PutSecret sends the credential to the daemon, which stores it, before
// the worker uses it. Should the daemon die in between, the next round
// adopts Grafana's password from the release (charts.adoptSecret).
func (w *wireSink) PutSecret(key, value, origin string) (string, error) {
	w.mu.Lock()
	if v := w.secrets[key]; v != "" {
		w.mu.Unlock()
		return v, nil
	}
	w.secrets[key] = value
	w.mu.Unlock()
	if err := w.write(workerEvent{Secret: &secretEvent{Key: key, Value: value, Origin: origin}}); err != nil {
		return "", fmt.Errorf("send the credential %s to the agent: %w", key, err)
	}
	return value, nil
}

func (w *wireSink) ClusterID() string { return w.clusterID }
