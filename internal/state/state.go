// Package state persists what only the agent knows: its identity, the
// cluster it registered as, the gateway it was handed, the token it sent and
// the secrets it generated. The file is versioned JSON written atomically
// (temp file, fsync, rename, fsync of the directory) with mode 0600, so a
// crash leaves the old file or the new one, never half of each. Standard
// library only.
package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// CurrentVersion is the record version this agent writes.
const CurrentVersion = 1

// FileName is the state file inside the state directory.
const FileName = "state.json"

// ErrNewerVersion means the file was written by a newer agent.
var ErrNewerVersion = errors.New("state written by a newer agent")

// State is the persisted record. Secrets (tokens, passwords) live here and
// nowhere else; the file is 0600 inside a 0700 directory.
type State struct {
	Version      int    `json:"version"`
	AgentID      string `json:"agent_id,omitempty"`
	ClusterID    string `json:"cluster_id,omitempty"`
	ClusterUUID  string `json:"cluster_uuid,omitempty"`
	GatewayWSURL string `json:"gateway_ws_url,omitempty"`
	// ClusterToken is the agent's current Kubernetes token, the one sent as
	// k8s_service_token (protocol.md §10). A restart reuses it while the API
	// server still accepts it.
	ClusterToken string `json:"cluster_token,omitempty"`
	// ClusterCAData is the base64 PEM of the cluster CA sent with it.
	ClusterCAData string `json:"cluster_cert_data,omitempty"`
	// CredentialsFingerprint identifies the token and CA last registered with,
	// so a restart can resume without re-registering (protocol.md §8.3).
	CredentialsFingerprint string `json:"credentials_fingerprint,omitempty"`
	// TokenSource says where ClusterToken came from ("secret",
	// "token-request" or "configured"), TokenSecret names its Secret, and
	// TokenIssuedAt/TokenExpiresAt bound a TokenRequest token's life (zero
	// for non-expiring tokens).
	TokenSource    string    `json:"token_source,omitempty"`
	TokenSecret    string    `json:"token_secret,omitempty"`
	TokenIssuedAt  time.Time `json:"token_issued_at,omitzero"`
	TokenExpiresAt time.Time `json:"token_expires_at,omitzero"`
	// KubeServer is the API server the token belongs to.
	KubeServer string `json:"kube_server,omitempty"`
	// TokenMode remembers whether KubeServer's cluster has a token
	// controller ("secret") or not ("token-request"), so a restart does not
	// wait for one again. Empty: not known yet.
	TokenMode string `json:"token_mode,omitempty"`
	// K8sVersion is the API server version last seen; a resume registration
	// may send it while the API server is unreachable (it is the real one,
	// not a guess, protocol.md §13.24).
	K8sVersion string `json:"k8s_version,omitempty"`
	// Secrets holds generated credentials, e.g. "grafana_admin_password".
	// Generated once and never regenerated (protocol.md §13.12).
	Secrets      map[string]string `json:"secrets,omitempty"`
	RegisteredAt time.Time         `json:"registered_at,omitzero"`
	// PublicIP is the last public address the lookup services reported
	// (register.server_ip), reused for an hour (internal/locality).
	PublicIP          string    `json:"public_ip,omitempty"`
	PublicIPCheckedAt time.Time `json:"public_ip_checked_at,omitzero"`
	UpdatedAt         time.Time `json:"updated_at,omitzero"`
}

// clone returns a deep copy so callers never share the map.
func (s State) clone() State {
	if s.Secrets != nil {
		m := make(map[string]string, len(s.Secrets))
		for k, v := range s.Secrets {
			m[k] = v
		}
		s.Secrets = m
	}
	return s
}

// Store is the agent's state, cached in memory and persisted on each Update.
// A Store with an empty directory keeps state in memory only (tests, dry runs).
type Store struct {
	dir string
	log *slog.Logger
	now func() time.Time

	mu  sync.Mutex
	cur State
}

// Open loads the state in dir, creating the directory (0700) if needed. A
// missing file is an empty state. A corrupt file is moved aside as
// state.json.corrupt-<time>, reported in one log line, and replaced by an
// empty state: the agent then re-registers instead of crashing.
func Open(dir string, log *slog.Logger) (*Store, error) {
	s := &Store{dir: dir, log: log, now: time.Now, cur: State{Version: CurrentVersion}}
	if dir == "" {
		return s, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create state directory: %w", err)
	}
	// A crash between CreateTemp and Rename leaves a temp file behind; the
	// state file itself is whole (old or new). Remove the leftovers.
	if tmps, _ := filepath.Glob(filepath.Join(dir, "."+FileName+".tmp-*")); len(tmps) > 0 {
		for _, t := range tmps {
			_ = os.Remove(t)
		}
	}
	b, err := os.ReadFile(s.Path())
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read state: %w", err)
	}
	st, err := decode(b)
	if errors.Is(err, ErrNewerVersion) {
		return nil, fmt.Errorf("%s: %w: upgrade pipeops-agent", s.Path(), err)
	}
	if err != nil {
		aside := fmt.Sprintf("%s.corrupt-%s", s.Path(), s.now().UTC().Format("20060102T150405Z"))
		if rerr := os.Rename(s.Path(), aside); rerr != nil {
			return nil, fmt.Errorf("state file %s is corrupt (%v) and could not be moved aside: %w", s.Path(), err, rerr)
		}
		if log != nil { // raw keys (logging.KeyFile, logging.KeyErr): state is a stdlib-only leaf
			log.Error("state file was corrupt; moved it aside and starting with empty state (the agent will register again)",
				"file", s.Path(), "moved_to", aside, "err", err)
		}
		return s, nil
	}
	s.cur = st
	return s, nil
}

func decode(b []byte) (State, error) {
	var probe struct {
		Version int `json:"version"`
	}
	if err := json.Unmarshal(b, &probe); err != nil {
		return State{}, fmt.Errorf("parse state: %w", err)
	}
	switch {
	case probe.Version > CurrentVersion:
		return State{}, fmt.Errorf("%w (version %d)", ErrNewerVersion, probe.Version)
	case probe.Version < 1:
		return State{}, fmt.Errorf("parse state: missing or invalid version %d", probe.Version)
	}
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return State{}, fmt.Errorf("parse state: %w", err)
	}
	return st, nil
}

// Path is the state file's location ("" for a memory store).
func (s *Store) Path() string {
	if s.dir == "" {
		return ""
	}
	return filepath.Join(s.dir, FileName)
}

// Get returns a copy of the current state.
func (s *Store) Get() State {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur.clone()
}

// Update applies fn to a copy of the state and persists the result
// atomically. If fn or the write fails, the state is unchanged.
func (s *Store) Update(fn func(*State) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := s.cur.clone()
	if err := fn(&next); err != nil {
		return err
	}
	next.Version = CurrentVersion
	next.UpdatedAt = s.now().UTC()
	if s.dir != "" {
		b, err := json.MarshalIndent(next, "", "  ")
		if err != nil {
			return fmt.Errorf("encode state: %w", err)
		}
		if err := WriteFileAtomic(s.Path(), append(b, '\n'), 0o600); err != nil {
			return fmt.Errorf("write state: %w", err)
		}
	}
	s.cur = next
	return nil
}

// WriteFileAtomic writes data to path so that readers see the old content or
// the new, never a mix: temp file in the same directory, fsync, rename, fsync
// of the directory.
func WriteFileAtomic(path string, data []byte, mode os.FileMode) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()
	if err = f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if _, err = f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err = f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
