package state

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestUpdatePersistsWithMode0600(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Update(func(st *State) error { st.ClusterID = "c-1"; st.AgentID = "agent-0011223344556677"; return nil }); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("state file mode = %v; want 0600", fi.Mode().Perm())
	}
	s2, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := s2.Get(); got.ClusterID != "c-1" || got.Version != CurrentVersion {
		t.Fatalf("reopened state = %+v; want cluster c-1, version %d", got, CurrentVersion)
	}
}

func TestConcurrentWritersNeverLoseOrTearUpdates(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key := fmt.Sprintf("k%02d", i)
			if err := s.Update(func(st *State) error {
				if st.Secrets == nil {
					st.Secrets = map[string]string{}
				}
				st.Secrets[key] = key
				return nil
			}); err != nil {
				t.Error(err)
			}
		}()
	}
	// A second store on the same directory reads while writers run: every
	// read must parse (rename is atomic), never a torn file.
	stop := make(chan struct{})
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		for {
			select {
			case <-stop:
				return
			default:
			}
			b, err := os.ReadFile(filepath.Join(dir, FileName))
			if err != nil {
				continue
			}
			if _, err := decode(b); err != nil {
				t.Errorf("reader saw a torn file: %v", err)
				return
			}
		}
	}()
	wg.Wait()
	close(stop)
	<-readerDone
	s2, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(s2.Get().Secrets); n != 50 {
		t.Fatalf("persisted %d keys; want 50", n)
	}
	left, _ := filepath.Glob(filepath.Join(dir, ".*tmp-*"))
	if len(left) != 0 {
		t.Fatalf("temp files left behind: %v", left)
	}
}

func TestCrashMidWriteLeavesOldOrNewFile(t *testing.T) {
	dir := t.TempDir()
	s, _ := Open(dir, nil)
	if err := s.Update(func(st *State) error { st.ClusterID = "old"; return nil }); err != nil {
		t.Fatal(err)
	}
	// Simulate a crash after the temp file was partly written but before the
	// rename: a half-written temp file sits beside the real one.
	if err := os.WriteFile(filepath.Join(dir, ".state.json.tmp-crash"), []byte(`{"version":1,"clus`), 0o600); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := s2.Get().ClusterID; got != "old" {
		t.Fatalf("after a crash mid-write ClusterID = %q; want the old value", got)
	}
	if _, err := os.Stat(filepath.Join(dir, ".state.json.tmp-crash")); !os.IsNotExist(err) {
		t.Fatalf("the crashed write's temp file is still there after Open (%v)", err)
	}
	// A failed update (fn error) leaves memory and disk unchanged.
	_ = s2.Update(func(st *State) error { st.ClusterID = "new"; return fmt.Errorf("abort") })
	if got := s2.Get().ClusterID; got != "old" {
		t.Fatalf("after a failed update ClusterID = %q; want old", got)
	}
}

func TestCorruptFileIsMovedAsideAndReportedOnce(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, FileName), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	s, err := Open(dir, slog.New(slog.NewJSONHandler(&logs, nil)))
	if err != nil {
		t.Fatalf("Open on a corrupt file = %v; want recovery", err)
	}
	if s.Get().ClusterID != "" {
		t.Fatal("recovered state must be empty")
	}
	aside, _ := filepath.Glob(filepath.Join(dir, FileName+".corrupt-*"))
	if len(aside) != 1 {
		t.Fatalf("corrupt file not moved aside: %v", aside)
	}
	if n := strings.Count(logs.String(), "\n"); n != 1 || !strings.Contains(logs.String(), "corrupt") {
		t.Fatalf("want exactly one log line about the corrupt file, got:\n%s", logs.String())
	}
	if err := s.Update(func(st *State) error { st.ClusterID = "fresh"; return nil }); err != nil {
		t.Fatal(err)
	}
}

func TestNewerVersionIsAnActionableError(t *testing.T) {
	dir := t.TempDir()
	b, _ := json.Marshal(map[string]any{"version": 99})
	os.WriteFile(filepath.Join(dir, FileName), b, 0o600)
	_, err := Open(dir, nil)
	if err == nil || !strings.Contains(err.Error(), "upgrade pipeops-agent") {
		t.Fatalf("Open = %v; want an error telling the user to upgrade", err)
	}
}
