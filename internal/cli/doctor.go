package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/pipeops/pipeops-vm-agent/installer"
	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/config"
	"github.com/pipeops/pipeops-vm-agent/internal/localclient"
	"github.com/pipeops/pipeops-vm-agent/internal/paths"
)

// Check levels, printed first on every doctor line.
const (
	levelOK   = "OK"
	levelWarn = "WARN"
	levelFail = "FAIL"
)

// check is one doctor line: what was checked, what was found, and the fix.
type check struct {
	Level  string `json:"level"`
	Name   string `json:"name"`
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
}

// doctorDeps are the host facts doctor reads; tests replace them.
type doctorDeps struct {
	configPath   string
	defaultsFile string   // /etc/default/pipeops-agent: the agent's HTTPS_PROXY and friends
	kubeconfigs  []string // well-known kubeconfig locations, after config and environment
	stateDir     string
	homeDirs     []string // hidden from the agent by ProtectHome=yes
	statfs       func(path string) (free, total uint64, err error)
	timeout      time.Duration
}

func defaultDoctorDeps() doctorDeps {
	return doctorDeps{
		defaultsFile: paths.DefaultsFile,
		kubeconfigs: []string{"/etc/rancher/k3s/k3s.yaml", "/etc/rancher/rke2/rke2.yaml", "/etc/kubernetes/admin.conf",
			"/var/snap/microk8s/current/credentials/client.config"},
		stateDir: paths.DefaultState,
		homeDirs: []string{"/home", "/root", "/run/user"},
		statfs:   statfs,
		timeout:  5 * time.Second,
	}
}

func newDoctorCommand(e *env) *cli.Command {
	return &cli.Command{
		Name:  "doctor",
		Usage: "check this host's setup: config, token, Kubernetes, the control plane link, clock, service, disk",
		Description: "Each line is OK, WARN or FAIL, and a problem comes with its fix. Exits 1 when any check FAILs.\n" +
			"Run it with sudo to read the token and the agent's local API.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config", Usage: "config file (default $PIPEOPS_CONFIG or /etc/pipeops/agent.yaml)"},
			jsonFlag,
		},
		Action: func(c *cli.Context) error {
			d := defaultDoctorDeps()
			d.configPath = c.String("config")
			checks := runDoctor(c.Context, e, d)
			if c.Bool("json") {
				_ = writeJSON(e.stdout, checks)
			} else {
				printChecks(e.stdout, checks)
			}
			for _, ch := range checks {
				if ch.Level == levelFail {
					return withCode(ExitError, errSilent)
				}
			}
			return nil
		},
	}
}

func printChecks(w io.Writer, checks []check) {
	fails, warns := 0, 0
	for _, c := range checks {
		fmt.Fprintf(w, "%-4s  %-12s %s\n", c.Level, c.Name, c.Detail)
		if c.Fix != "" {
			fmt.Fprintf(w, "      %-12s fix: %s\n", "", c.Fix)
		}
		switch c.Level {
		case levelFail:
			fails++
		case levelWarn:
			warns++
		}
	}
	fmt.Fprintf(w, "%d checks: %d failed, %d warnings\n", len(checks), fails, warns)
}

// runDoctor runs every check in the order an operator fixes things.
func runDoctor(ctx context.Context, e *env, d doctorDeps) []check {
	var out []check
	add := func(c ...check) { out = append(out, c...) }

	cfg, cfgChecks := checkConfig(e, d)
	add(cfgChecks...)
	st, err := e.client.Status(ctx)
	add(checkKubernetes(e, d, cfg, st, err)...)
	add(checkNetwork(ctx, e, d, cfg)...)
	add(checkService(ctx, e))
	add(checkDisk(d))
	return out
}

// checkConfig loads and validates the configuration as the agent does, and
// reports the token on its own line.
func checkConfig(e *env, d doctorDeps) (*config.Config, []check) {
	cfg, warnings, err := config.Load(config.Options{Path: d.configPath, Getenv: e.getenv,
		Decrypt: installer.DecryptToken(context.Background(), nil)})
	if err != nil {
		return config.Default(), []check{
			{levelFail, "config", err.Error(), "fix the file, then check it with \"pipeopsctl config validate\""},
			{levelWarn, "token", "not checked: the configuration does not load", ""},
		}
	}
	var cfgErrs []string
	tokenMissing := false
	if verr := cfg.Validate(); verr != nil {
		var fe *config.FieldError
		for _, err := range unjoin(verr) {
			if errors.As(err, &fe) && fe.Field == "pipeops.token" {
				tokenMissing = true
				continue
			}
			cfgErrs = append(cfgErrs, err.Error())
		}
	}
	var out []check
	switch {
	case len(cfgErrs) > 0:
		out = append(out, check{levelFail, "config", strings.Join(cfgErrs, "; "), "fix it, then check with \"pipeopsctl config validate\""})
	case len(warnings) > 0:
		out = append(out, check{levelWarn, "config", strings.Join(warnings, "; "), ""})
	default:
		src := "built-in defaults"
		if len(cfg.Sources) > 0 {
			src = strings.Join(cfg.Sources, ", ")
		}
		out = append(out, check{levelOK, "config", "valid (" + src + ")", ""})
	}
	out = append(out, checkToken(cfg, tokenMissing))
	for _, w := range cfg.SecurityWarnings() {
		out = append(out, check{levelWarn, "security", w.Field + ": " + w.Message, w.Fix})
	}
	return cfg, out
}

// unjoin splits errors.Join trees down to their leaves, keeping each
// *config.FieldError whole (it unwraps to its cause and ErrInvalid).
func unjoin(err error) []error {
	if _, ok := err.(*config.FieldError); ok { //nolint:errorlint // a leaf, not a match
		return []error{err}
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok { //nolint:errorlint // splitting errors.Join
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, unjoin(e)...)
		}
		return out
	}
	return []error{err}
}

func checkToken(cfg *config.Config, missing bool) check {
	if !missing && cfg.PipeOps.Token != "" {
		c := check{levelOK, "token", "present (from " + cfg.TokenSource + ")", ""}
		if st, err := os.Stat(paths.TokenFile); err == nil && cfg.TokenSource == paths.TokenFile && st.Mode().Perm()&0o077 != 0 {
			c = check{levelWarn, "token", fmt.Sprintf("%s is readable by others (mode %04o)", paths.TokenFile, st.Mode().Perm()),
				"sudo chmod 600 " + paths.TokenFile}
		}
		return c
	}
	for _, p := range []string{paths.EncryptedTokenFile, paths.TokenFile} {
		if _, err := os.Stat(p); err == nil {
			return check{levelWarn, "token", p + " exists but this user cannot read it", "run doctor with sudo"}
		}
	}
	return check{levelFail, "token", "no token (not in " + paths.EncryptedTokenFile + ", " + paths.TokenFile + ", PIPEOPS_TOKEN or the config)",
		"sudo pipeopsctl install --token-file FILE"}
}

// checkKubernetes asks the running agent (it knows whether its kubeconfig
// works and its RBAC suffices); without it, it looks for a kubeconfig file.
func checkKubernetes(e *env, d doctorDeps, cfg *config.Config, st *apitype.StatusResponse, err error) []check {
	if err == nil {
		k := st.Kubernetes
		var out []check
		if k.Reachable {
			out = append(out, check{levelOK, "kubernetes", fmt.Sprintf("%s at %s, %d nodes (reported by the running agent)", k.Version, orDash(k.Server), k.Nodes), ""})
		} else {
			out = append(out, check{levelFail, "kubernetes", "the agent cannot reach the cluster: " + orDash(k.LastError),
				"check kubernetes.kubeconfig and that the API server is up; details in \"pipeopsctl logs -n 50\""})
		}
		bad := 0
		for _, c := range st.Conditions {
			if c.OK {
				continue
			}
			bad++
			lvl := levelWarn
			if c.Required {
				lvl = levelFail
			}
			out = append(out, check{lvl, "condition", c.Name + ": " + orDash(c.Reason), "see \"pipeopsctl status\" and \"pipeopsctl logs -n 50\""})
		}
		if bad == 0 {
			out = append(out, check{levelOK, "rbac", fmt.Sprintf("all %d agent conditions hold", len(st.Conditions)), ""})
		}
		return out
	}
	notRunning := "the agent is not running, so RBAC was not checked"
	if errors.Is(err, localclient.ErrAccessDenied) {
		notRunning = "cannot open the agent's socket as this user, so RBAC was not checked"
	}
	if cfg.Kubernetes.InCluster {
		return []check{{levelOK, "kubernetes", "in-cluster configuration", ""}, {levelWarn, "rbac", notRunning, "start the agent, then rerun doctor"}}
	}
	var tried []string
	cands := []string{cfg.Kubernetes.Kubeconfig, e.getenv("PIPEOPS_KUBECONFIG")}
	cands = append(cands, filepath.SplitList(e.getenv("KUBECONFIG"))...)
	cands = append(cands, d.kubeconfigs...)
	for _, p := range cands {
		if p == "" {
			continue
		}
		f, err := os.Open(p)
		if err != nil {
			tried = append(tried, p)
			continue
		}
		f.Close()
		kc := check{levelOK, "kubernetes", "kubeconfig " + p + " (not contacted: the agent is not running)", ""}
		if slices.ContainsFunc(d.homeDirs, func(h string) bool { return under(p, h) }) {
			kc = check{levelFail, "kubernetes", "kubeconfig " + p + " is in a home directory, which the unit's ProtectHome=yes hides from the agent",
				"copy it to /etc/pipeops/kubeconfig (mode 0600) and set kubernetes.kubeconfig in /etc/pipeops/agent.d/50-local.yaml"}
		}
		return []check{kc, {levelWarn, "rbac", notRunning, "start the agent (sudo systemctl start pipeops-agent), then rerun doctor"}}
	}
	return []check{{levelFail, "kubernetes", "no kubeconfig found (tried " + strings.Join(tried, ", ") + ")",
		"install k3s, or set kubernetes.kubeconfig in /etc/pipeops/agent.d/50-local.yaml"}}
}

func under(p, dir string) bool { return p == dir || strings.HasPrefix(p, dir+"/") }

// checkService reads the unit's state from systemd.
func checkService(ctx context.Context, e *env) check {
	out, err := e.systemctl(ctx, "show", paths.UnitName, "-p", "LoadState,ActiveState,SubState,Result,NRestarts,UnitFileState")
	if err != nil {
		return check{levelWarn, "service", "systemd is not available here, so the unit was not checked", "run the agent under systemd (pipeopsctl install)"}
	}
	kv := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok {
			kv[k] = v
		}
	}
	state := fmt.Sprintf("%s (%s), %s", kv["ActiveState"], kv["SubState"], orDash(kv["UnitFileState"]))
	restarts, _ := strconv.Atoi(kv["NRestarts"])
	switch {
	case kv["LoadState"] != "loaded":
		return check{levelFail, "service", paths.UnitName + " is not installed", "sudo pipeopsctl install --token-file FILE"}
	case kv["ActiveState"] == "failed":
		return check{levelFail, "service", state + ", result " + kv["Result"], "see why with \"pipeopsctl logs -n 50\", then sudo systemctl restart pipeops-agent"}
	case kv["ActiveState"] != "active":
		return check{levelFail, "service", state, "sudo systemctl start pipeops-agent (it stays inactive while it has no token: sudo pipeopsctl install --token-file FILE)"}
	case kv["UnitFileState"] != "enabled":
		return check{levelWarn, "service", state + ": it will not start at boot", "sudo systemctl enable pipeops-agent"}
	case restarts > 0:
		return check{levelWarn, "service", fmt.Sprintf("%s, restarted %d times", state, restarts), "see why with \"pipeopsctl logs --since today -p warning\""}
	}
	return check{levelOK, "service", state, ""}
}

// Disk thresholds for the state directory's filesystem.
const (
	diskFail = 100 << 20
	diskWarn = 1 << 30
)

func checkDisk(d doctorDeps) check {
	p := d.stateDir
	for {
		if _, err := os.Stat(p); err == nil || p == "/" || p == "." {
			break
		}
		p = filepath.Dir(p)
	}
	free, _, err := d.statfs(p)
	if err != nil {
		return check{levelWarn, "disk", "cannot measure free space on " + p + ": " + err.Error(), ""}
	}
	detail := fmt.Sprintf("%s free for %s", humanBytes(free), d.stateDir)
	switch {
	case free < diskFail:
		return check{levelFail, "disk", detail, "free space on the filesystem holding " + d.stateDir}
	case free < diskWarn:
		return check{levelWarn, "disk", detail, "free space on the filesystem holding " + d.stateDir}
	}
	return check{levelOK, "disk", detail, ""}
}

func statfs(path string) (free, total uint64, err error) {
	var s syscall.Statfs_t
	if err := syscall.Statfs(path, &s); err != nil {
		return 0, 0, err
	}
	return s.Bavail * uint64(s.Bsize), s.Blocks * uint64(s.Bsize), nil
}

func humanBytes(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%d KiB", n>>10)
}

// readDefaults parses /etc/default/pipeops-agent (KEY=VALUE lines, as
// systemd's EnvironmentFile= reads them) so doctor sees the agent's proxy.
func readDefaults(path string) map[string]string {
	kv := map[string]string{}
	f, err := os.Open(path)
	if err != nil {
		return kv
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		k, v, ok := strings.Cut(strings.TrimPrefix(line, "export "), "=")
		if !ok {
			continue
		}
		kv[strings.TrimSpace(k)] = strings.Trim(strings.TrimSpace(v), `"'`)
	}
	return kv
}
