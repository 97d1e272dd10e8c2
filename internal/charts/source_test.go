package charts

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/repo"
)

// chartRepo serves a real Helm chart repository (index.yaml + archive) made
// from a testdata chart, and counts requests.
func chartRepo(t *testing.T, chartName string) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	dir := t.TempDir()
	ch, err := loader.Load(testChart(chartName))
	if err != nil {
		t.Fatal(err)
	}
	archive, err := chartutil.Save(ch, dir)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(archive)
	sum := sha256.Sum256(b)
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		http.FileServer(http.Dir(dir)).ServeHTTP(w, r)
	}))
	idx := repo.NewIndexFile()
	if err := idx.MustAdd(ch.Metadata, filepath.Base(archive), srv.URL, hex.EncodeToString(sum[:])); err != nil {
		t.Fatal(err)
	}
	if err := idx.WriteFile(filepath.Join(dir, "index.yaml"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	return srv, &hits
}

func TestRepoChartIsFetchedIntoTheCacheDirAndReusedOffline(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("XDG_CACHE_HOME", "")
	t.Setenv("XDG_CONFIG_HOME", "")
	srv, hits := chartRepo(t, "metrics-server")
	m := unitManager(t, nil)
	src := source{Kind: sourceRepo, Ref: "metrics-server", Repo: srv.URL, Version: "0.1.0"}

	ch, err := m.loadChart(nil, src)
	if err != nil {
		t.Fatalf("loadChart from %s: %v", srv.URL, err)
	}
	if ch.Metadata.Name != "metrics-server" || hits.Load() != 2 {
		t.Fatalf("chart %s after %d requests; want metrics-server after 2 (index, archive)", ch.Metadata.Name, hits.Load())
	}
	if _, err := os.Stat(filepath.Join(m.opts.CacheDir, "charts", "metrics-server-0.1.0.tgz")); err != nil {
		t.Errorf("archive not cached under the cache dir: %v", err)
	}
	if entries, _ := os.ReadDir(home); len(entries) != 0 {
		t.Errorf("Helm wrote under $HOME: %v", entries)
	}

	srv.Close() // a restart without network: the pinned archive is in the cache
	if _, err := m.loadChart(nil, src); err != nil {
		t.Fatalf("loadChart of a cached pinned chart without network: %v", err)
	}
	_, err = m.loadChart(nil, source{Kind: sourceRepo, Ref: "metrics-server", Repo: srv.URL})
	if err == nil || !strings.Contains(err.Error(), "monitoring.charts_dir") {
		t.Errorf("loadChart of an unpinned chart without network = %v; want an error pointing at charts_dir", err)
	}
}

func TestRepoChartErrorsNameWhatIsMissing(t *testing.T) {
	srv, _ := chartRepo(t, "metrics-server")
	m := unitManager(t, nil)
	for _, tc := range []struct {
		src  source
		want string
	}{
		{source{Kind: sourceRepo, Ref: "metrics-server", Repo: srv.URL, Version: "9.9.9"}, `chart metrics-server version 9.9.9 is not in`},
		{source{Kind: sourceRepo, Ref: "vpa", Repo: srv.URL}, `chart vpa version newest is not in`},
		{source{Kind: sourceLocal, Ref: testChart("loki-stack"), Version: "2.10.2"}, "has version 0.1.0 but version 2.10.2 is pinned"},
	} {
		if _, err := m.loadChart(nil, tc.src); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("loadChart(%s) = %v; want an error containing %q", tc.src, err, tc.want)
		}
	}
}

func TestAirGappedChartsDirResolvesEveryChartLocally(t *testing.T) {
	m := unitManager(t, func(o *Options) { o.ChartsDir = filepath.Join(filepath.Dir(testChart("x"))) })
	for _, c := range m.opts.Components {
		src, err := m.resolveSource(&c)
		if c.Name == "metrics_server" || c.Name == "loki" || c.Name == "prometheus" {
			if err != nil || src.Kind != sourceLocal {
				t.Errorf("%s: source %+v, %v; want a local chart from charts_dir", c.Name, src, err)
				continue
			}
			if _, err := m.loadChart(nil, src); err != nil {
				t.Errorf("%s: %v", c.Name, err)
			}
		}
	}
	oci := Component{Name: "traefik", Chart: "oci://ghcr.io/traefik/helm/traefik", Version: "33.1.0"}
	if src, _ := m.resolveSource(&oci); src.Kind != sourceOCI {
		t.Errorf("an explicit oci:// chart = %+v; want it kept even in air-gapped mode", src)
	}
}

func TestChartDigestChangesWithContentOnly(t *testing.T) {
	a, err := loader.Load(testChart("metrics-server"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := loader.Load(testChart("metrics-server"))
	if chartDigest(a) != chartDigest(b) {
		t.Fatal("digest of the same chart differs between loads")
	}
	b.Raw[0].Data = append([]byte("# edited\n"), b.Raw[0].Data...)
	if chartDigest(a) == chartDigest(b) {
		t.Fatal("digest ignores an edited file")
	}
}
