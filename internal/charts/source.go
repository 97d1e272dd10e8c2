package charts

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/Masterminds/semver/v3"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/downloader"
	"helm.sh/helm/v3/pkg/getter"
	"helm.sh/helm/v3/pkg/repo"

	"github.com/pipeops/pipeops-vm-agent/internal/state"
)

// Source kinds.
const (
	sourceRepo  = "repo"  // chart repository: repo URL + chart name + version
	sourceOCI   = "oci"   // oci://registry/path/chart
	sourceLocal = "local" // a .tgz or chart directory on this host
)

// source is where one release's chart comes from.
type source struct {
	Kind    string
	Ref     string // chart name (repo), oci:// reference, or local path
	Repo    string
	Version string // pinned version; "" = newest
}

// chartName is the chart's name as Helm records it in the release.
func (s source) chartName() string {
	return strings.TrimSuffix(path.Base(s.Ref), ".tgz")
}

func (s source) String() string {
	switch s.Kind {
	case sourceRepo:
		return fmt.Sprintf("%s from %s (version %s)", s.Ref, s.Repo, orNewest(s.Version))
	case sourceOCI:
		return fmt.Sprintf("%s (version %s)", s.Ref, orNewest(s.Version))
	}
	return s.Ref
}

func orNewest(v string) string {
	if v == "" {
		return "newest"
	}
	return v
}

// resolveSource applies the precedence: an oci:// reference, an absolute
// path, the air-gapped charts directory, then the chart repository.
func (m *Engine) resolveSource(s *Component) (source, error) {
	switch {
	case strings.HasPrefix(s.Chart, "oci://"):
		return source{Kind: sourceOCI, Ref: s.Chart, Version: s.Version}, nil
	case filepath.IsAbs(s.Chart):
		return source{Kind: sourceLocal, Ref: s.Chart, Version: s.Version}, nil
	case m.opts.ChartsDir != "":
		p, err := findInDir(m.opts.ChartsDir, s.Chart, s.Version)
		if err != nil {
			return source{}, err
		}
		return source{Kind: sourceLocal, Ref: p, Version: s.Version}, nil
	}
	return source{Kind: sourceRepo, Ref: s.Chart, Repo: s.Repo, Version: s.Version}, nil
}

// findInDir looks for chart in the air-gapped directory, in this order:
// <chart>-<version>.tgz (when pinned), <chart>/ (a chart directory),
// <chart>.tgz, then the highest <chart>-<semver>.tgz.
func findInDir(dir, name, version string) (string, error) {
	var tried []string
	try := func(p string) bool {
		tried = append(tried, p)
		_, err := os.Stat(p)
		return err == nil
	}
	if version != "" {
		if p := filepath.Join(dir, name+"-"+version+".tgz"); try(p) {
			return p, nil
		}
	}
	if p := filepath.Join(dir, name); try(filepath.Join(p, "Chart.yaml")) {
		return p, nil
	}
	if p := filepath.Join(dir, name+".tgz"); try(p) {
		return p, nil
	}
	matches, _ := filepath.Glob(filepath.Join(dir, name+"-*.tgz"))
	type cand struct {
		path string
		v    *semver.Version
	}
	var cands []cand
	for _, p := range matches {
		if v, err := semver.NewVersion(strings.TrimSuffix(strings.TrimPrefix(filepath.Base(p), name+"-"), ".tgz")); err == nil {
			cands = append(cands, cand{p, v})
		}
	}
	if len(cands) > 0 && version == "" {
		sort.Slice(cands, func(i, j int) bool { return cands[i].v.GreaterThan(cands[j].v) })
		return cands[0].path, nil
	}
	tried = append(tried, filepath.Join(dir, name+"-<version>.tgz"))
	return "", fmt.Errorf("chart %s (version %s) is not in charts_dir: tried %s; copy the chart there (helm pull %s --version X)",
		name, orNewest(version), strings.Join(tried, ", "), name)
}

// loadChart reads the chart, downloading it into the cache first when it
// comes from a repository or registry. A pinned version already in the cache
// is not fetched again, so a restart needs no network.
func (m *Engine) loadChart(h *helmEnv, src source) (*chart.Chart, error) {
	p := src.Ref
	if src.Kind != sourceLocal {
		var err error
		if p, err = m.fetch(h, src); err != nil {
			return nil, err
		}
	}
	ch, err := loader.Load(p)
	if err != nil {
		return nil, fmt.Errorf("load chart %s: %w", p, err)
	}
	if src.Version != "" && ch.Metadata.Version != src.Version {
		return nil, fmt.Errorf("chart %s has version %s but version %s is pinned: replace the file or change the pin", p, ch.Metadata.Version, src.Version)
	}
	return ch, nil
}

func (m *Engine) chartCache() string { return filepath.Join(m.opts.CacheDir, "charts") }

func (m *Engine) fetch(h *helmEnv, src source) (string, error) {
	name := src.chartName()
	if src.Version != "" {
		if p := filepath.Join(m.chartCache(), name+"-"+src.Version+".tgz"); fileExists(p) {
			return p, nil
		}
	}
	if err := os.MkdirAll(m.chartCache(), 0o700); err != nil {
		return "", fmt.Errorf("create chart cache: %w", err)
	}
	if src.Kind == sourceOCI {
		rc, err := h.registryClient()
		if err != nil {
			return "", err
		}
		dl := downloader.ChartDownloader{
			Out: io.Discard, Getters: getter.Getters(), RegistryClient: rc,
			Options:          []getter.Option{getter.WithRegistryClient(rc), getter.WithTimeout(fetchTimeout)},
			RepositoryConfig: filepath.Join(m.opts.CacheDir, "repositories.yaml"),
			RepositoryCache:  filepath.Join(m.opts.CacheDir, "repository"),
		}
		p, _, err := dl.DownloadTo(src.Ref, src.Version, m.chartCache())
		if err != nil {
			return "", fmt.Errorf("pull %s: %w (for air-gapped hosts set monitoring.charts_dir)", src, err)
		}
		return p, nil
	}
	return m.fetchFromRepo(src)
}

const fetchTimeout = 2 * time.Minute

// fetchFromRepo reads the repository index into the cache directory (never
// under $HOME) and downloads the chart archive it names.
func (m *Engine) fetchFromRepo(src source) (string, error) {
	getters := getter.Getters()
	entry := &repo.Entry{Name: "pipeops-" + src.chartName(), URL: src.Repo}
	r, err := repo.NewChartRepository(entry, getters)
	if err != nil {
		return "", fmt.Errorf("chart repository %s: %w", src.Repo, err)
	}
	r.CachePath = filepath.Join(m.opts.CacheDir, "repository")
	if err := os.MkdirAll(r.CachePath, 0o700); err != nil {
		return "", fmt.Errorf("create repository cache: %w", err)
	}
	idxPath, err := r.DownloadIndexFile()
	if err != nil {
		return "", fmt.Errorf("download index of %s: %w (for air-gapped hosts set monitoring.charts_dir)", src.Repo, err)
	}
	idx, err := repo.LoadIndexFile(idxPath)
	if err != nil {
		return "", fmt.Errorf("read index of %s: %w", src.Repo, err)
	}
	cv, err := idx.Get(src.Ref, src.Version)
	if err != nil || len(cv.URLs) == 0 {
		return "", fmt.Errorf("chart %s version %s is not in %s", src.Ref, orNewest(src.Version), src.Repo)
	}
	dest := filepath.Join(m.chartCache(), src.Ref+"-"+cv.Version+".tgz")
	if fileExists(dest) {
		return dest, nil
	}
	u, err := repo.ResolveReferenceURL(src.Repo, cv.URLs[0])
	if err != nil {
		return "", fmt.Errorf("chart URL %q in %s: %w", cv.URLs[0], src.Repo, err)
	}
	pu, err := url.Parse(u)
	if err != nil {
		return "", fmt.Errorf("chart URL %q: %w", u, err)
	}
	g, err := getters.ByScheme(pu.Scheme)
	if err != nil {
		return "", fmt.Errorf("chart URL %q: %w", u, err)
	}
	buf, err := g.Get(u, getter.WithURL(src.Repo), getter.WithTimeout(fetchTimeout))
	if err != nil {
		return "", fmt.Errorf("download %s: %w", u, err)
	}
	if err := state.WriteFileAtomic(dest, buf.Bytes(), 0o600); err != nil {
		return "", fmt.Errorf("write %s: %w", dest, err)
	}
	return dest, nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// chartDigest fingerprints a local chart's files (and its dependencies'),
// so that editing a chart directory without bumping its version still
// upgrades the release.
func chartDigest(ch *chart.Chart) string {
	h := sha256.New()
	var walk func(c *chart.Chart)
	walk = func(c *chart.Chart) {
		files := slices.Clone(c.Raw)
		sort.Slice(files, func(i, j int) bool { return files[i].Name < files[j].Name })
		fmt.Fprintf(h, "chart %s %s\n", c.Name(), c.Metadata.Version)
		for _, f := range files {
			fmt.Fprintf(h, "%s %d\n", f.Name, len(f.Data))
			h.Write(f.Data)
		}
		deps := slices.Clone(c.Dependencies())
		sort.Slice(deps, func(i, j int) bool { return deps[i].Name() < deps[j].Name() })
		for _, d := range deps {
			walk(d)
		}
	}
	walk(ch)
	return hex.EncodeToString(h.Sum(nil))[:40]
}
