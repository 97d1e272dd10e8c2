package kube_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/config"
	"github.com/pipeops/pipeops-vm-agent/internal/kube"
	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
)

// memStore is a kube.CredentialStore in memory (the daemon's is the state file).
type memStore struct {
	mu sync.Mutex
	s  kube.Saved
	n  int // saves
}

var _ kube.CredentialStore = (*memStore)(nil)

func (m *memStore) LoadCredentials() kube.Saved { m.mu.Lock(); defer m.mu.Unlock(); return m.s }

func (m *memStore) SaveCredentials(s kube.Saved) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.s = s
	m.n++
	return nil
}

func (m *memStore) get() (kube.Saved, int) { m.mu.Lock(); defer m.mu.Unlock(); return m.s, m.n }

func (m *memStore) set(s kube.Saved) { m.mu.Lock(); defer m.mu.Unlock(); m.s = s }

// roundsComplete waits until the manager finished two more probe rounds.
func roundsComplete(t *testing.T, m *kube.Manager) {
	t.Helper()
	ctx := context.Background()
	first := m.Status(ctx).CheckedAt
	eventually(t, 10*time.Second, "probe rounds keep completing", func() bool {
		at := m.Status(ctx).CheckedAt
		return !at.IsZero() && at.After(first.Add(150*time.Millisecond))
	})
}

func TestASavedTokenIsReusedAfterOneCheckAndTheTokenControllerOutcomeIsRemembered(t *testing.T) {
	t.Parallel()
	// No kube-controller-manager: the first manager waits for a token
	// controller once, falls back to TokenRequest and saves both.
	p := kubetest.PrivateCluster(t, false)
	kcfg := config.Kubernetes{Namespace: "pipeops-system"}
	store := &memStore{}
	m1 := startManager(t, p.Env, kcfg, kube.WithStore(store), kube.WithIntervals(100*time.Millisecond, 100*time.Millisecond, 300*time.Millisecond))
	tok, ca := credentials(t, m1)
	saved, _ := store.get()
	if saved.Token != tok || saved.CAData != ca || saved.Source != kube.TokenFromRequest || saved.TokenMode != kube.TokenFromRequest ||
		saved.Expires.IsZero() || saved.Server != p.Config.Host {
		t.Fatalf("saved = %+v; want the TokenRequest token, its expiry, the server and the remembered outcome", saved)
	}

	// A restart: the saved token is handed out at once and kept after one
	// check. The token controller is not waited for again: with an hour's
	// wait, a manager that waited would stop completing probe rounds.
	m2 := startManager(t, p.Env, kcfg, kube.WithStore(store), kube.WithIntervals(100*time.Millisecond, 100*time.Millisecond, time.Hour))
	changed := m2.CredentialsChanged()
	if tok2, _ := credentials(t, m2); tok2 != tok {
		t.Fatal("a restarted manager did not start from the saved token")
	}
	eventually(t, 30*time.Second, "the saved token verified", func() bool { return m2.TokenInfo().Verified })
	roundsComplete(t, m2)
	if isClosed(changed) {
		t.Fatal("the credentials changed on a restart with a good saved token; the control-plane link would register again")
	}

	// A saved token the API server no longer accepts is replaced, and the
	// change is announced (the link then registers again).
	bad := saved
	bad.Token = "not-a-valid-token"
	store.set(bad)
	m3 := startManager(t, p.Env, kcfg, kube.WithStore(store), kube.WithIntervals(100*time.Millisecond, 100*time.Millisecond, time.Hour))
	changed = m3.CredentialsChanged()
	if tok3, _ := credentials(t, m3); tok3 != bad.Token {
		t.Fatal("the saved token was not handed out at once")
	}
	if !closedWithin(changed, 30*time.Second) {
		t.Fatal("a rejected saved token was not replaced")
	}
	if tok3, _ := credentials(t, m3); tok3 == bad.Token || !m3.TokenInfo().Verified {
		t.Fatalf("after the check: token replaced %v, verified %v", tok3 != bad.Token, m3.TokenInfo().Verified)
	}

	// The API server is down at start: the saved token is still handed out
	// at once (the control plane keeps sight of the cluster), the outage is
	// reported, and the token is checked and kept once the server returns.
	p.StopAPIServer(t)
	saved, _ = store.get()
	m4 := startManager(t, p.Env, kcfg, kube.WithStore(store), kube.WithIntervals(100*time.Millisecond, 100*time.Millisecond, time.Hour))
	changed = m4.CredentialsChanged()
	if tok4, _ := credentials(t, m4); tok4 != saved.Token {
		t.Fatal("with the API server down, the saved token was not handed out")
	}
	eventually(t, 30*time.Second, "the outage reported", func() bool {
		err := m4.Unreachable()
		return err != nil && strings.HasPrefix(err.Error(), "API server unreachable: ")
	})
	p.StartAPIServer(t)
	eventually(t, 60*time.Second, "reachable again and the token verified", func() bool {
		return m4.Unreachable() == nil && m4.TokenInfo().Verified
	})
	if isClosed(changed) {
		t.Fatal("the credentials changed after the outage although the saved token was good")
	}
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
