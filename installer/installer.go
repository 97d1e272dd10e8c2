// Package installer installs and removes pipeops-agent on a host: the unit
// (through kardianos/service, with the embedded systemd unit as its script),
// the token file, the agent.d/10-install.yaml drop-in, the uninstall script,
// enable and start. It is idempotent: a second run with the same inputs
// changes nothing and restarts nothing. Every path is below Options.Root, so
// tests install into a temporary tree. It is the only importer of
// kardianos/service.
package installer

import (
	"context"
	_ "embed" // uninstall.sh
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/pipeops/pipeops-vm-agent/internal/config"
	"github.com/pipeops/pipeops-vm-agent/internal/paths"
	"github.com/pipeops/pipeops-vm-agent/systemd"
)

// UninstallScript is written next to the binaries by a script install.
//
//go:embed uninstall.sh
var UninstallScript string

// Options say what to install where. The zero value installs onto / with
// the binaries in /usr/bin and keeps an existing token.
type Options struct {
	// Root prefixes every path ("" means /). Not "/" selects a service
	// manager that writes the unit below Root (tests, image builds).
	Root string
	// BinDir holds pipeops-agent and pipeopsctl (default /usr/bin). Another
	// directory gets an ExecStart= drop-in; the unit itself never changes.
	BinDir string
	// Token replaces the token when set; empty keeps the existing one.
	Token config.Secret
	// TokenStorage is auto (default), encrypted or plain (see TokenAuto).
	TokenStorage TokenStorage
	// APIURL and ClusterName go into agent.d/10-install.yaml when set.
	APIURL      string
	ClusterName string
	// HA turns on high availability (ha.enabled) in 10-install.yaml: the
	// same install on every server node, one agent active at a time.
	HA bool
	// Restart restarts a running agent even if nothing here changed (the
	// binaries were replaced).
	Restart bool
	// NoStart enables the unit but leaves it stopped.
	NoStart bool
	// Service replaces the service manager (tests).
	Service Service
	// Systemctl runs systemctl (default: from PATH).
	Systemctl func(ctx context.Context, args ...string) (string, error)
	// Out receives one line per step (default: discarded).
	Out io.Writer
}

// Result says what Install did.
type Result struct {
	// Changed names what was written: unit, exec drop-in, token, config, uninstall script.
	Changed []string
	// PackageOwned is true when a deb or rpm owns the unit.
	PackageOwned bool
	// Action is started, restarted, unchanged or not started.
	Action string
}

// Installer performs installs and removals. Build it with New.
type Installer struct {
	o   Options
	svc Service
}

// New fills defaults and picks the service manager. It touches nothing.
func New(o Options) (*Installer, error) {
	if o.Root == "" {
		o.Root = "/"
	}
	if o.BinDir == "" {
		o.BinDir = filepath.Dir(paths.AgentBinary)
	}
	if !filepath.IsAbs(o.BinDir) {
		return nil, fmt.Errorf("binary directory %q must be an absolute path", o.BinDir)
	}
	if o.Systemctl == nil {
		o.Systemctl = execSystemctl
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	in := &Installer{o: o, svc: o.Service}
	if in.svc == nil {
		if filepath.Clean(o.Root) == "/" {
			s, err := NewSystemService(in.agentBinary(""))
			if err != nil {
				return nil, err
			}
			in.svc = s
		} else {
			in.svc = &dirService{root: o.Root, systemctl: o.Systemctl}
		}
	}
	return in, nil
}

// path maps an absolute host path below Root.
func (in *Installer) path(p string) string { return filepath.Join(in.o.Root, p) }

// agentBinary is the agent's path on the host, below prefix.
func (in *Installer) agentBinary(prefix string) string {
	return filepath.Join(prefix, in.o.BinDir, filepath.Base(paths.AgentBinary))
}

func (in *Installer) execDropIn() string {
	return in.path(filepath.Join(paths.LocalUnit+".d", "10-exec.conf"))
}

// UninstallScriptPath is where a script install puts pipeops-uninstall.sh.
func (in *Installer) UninstallScriptPath() string {
	return filepath.Join(in.o.BinDir, "pipeops-uninstall.sh")
}

// PackageOwned reports whether a deb or rpm installed the unit.
func (in *Installer) PackageOwned() bool {
	_, err := os.Stat(in.path(paths.PackagedUnit))
	return err == nil
}

// CheckPlatform fails unless PID 1 is systemd, naming what kardianos found.
func (in *Installer) CheckPlatform() error {
	if p := in.svc.Platform(); p != PlatformSystemd {
		return fmt.Errorf("%w (found the %q service system): pipeops-agent needs systemd 247 or newer; "+
			"on a container or a non-systemd distribution run \"pipeops-agent run\" under your own supervisor", ErrNoSystemd, p)
	}
	return nil
}

func (in *Installer) say(format string, args ...any) { fmt.Fprintf(in.o.Out, format+"\n", args...) }

// Install writes what differs, validates the merged configuration, and
// starts or restarts the agent only when needed. On a config error it puts
// back the files it replaced.
func (in *Installer) Install(ctx context.Context) (*Result, error) {
	if err := in.CheckPlatform(); err != nil {
		return nil, err
	}
	res := &Result{PackageOwned: in.PackageOwned()}
	tx := &txn{}

	changed, err := in.storeToken(ctx, tx, in.o.Token.Reveal())
	if err != nil {
		if rerr := tx.rollback(); rerr != nil {
			err = errors.Join(err, rerr)
		}
		return nil, err
	}
	if changed {
		res.Changed = append(res.Changed, "token")
	}

	dropIn := in.path(filepath.Join(paths.DropInDir, "10-install.yaml"))
	if in.o.APIURL != "" || in.o.ClusterName != "" || in.o.HA {
		old, _ := os.ReadFile(dropIn)
		body := renderDropIn(mergeDropIn(parseDropIn(old), in.o.APIURL, in.o.ClusterName, in.o.HA))
		changed, err := tx.write(dropIn, body, 0o644)
		if err != nil {
			return nil, fmt.Errorf("write %s: %w", dropIn, err)
		}
		if changed {
			res.Changed = append(res.Changed, "config")
		}
	}

	if err := in.validate(); err != nil {
		if rerr := tx.rollback(); rerr != nil {
			err = errors.Join(err, rerr)
		}
		return nil, err
	}

	if err := in.installUnit(ctx, res, tx); err != nil {
		return nil, err
	}
	if err := in.start(ctx, res); err != nil {
		return res, err
	}
	return res, nil
}

// validate loads the configuration exactly as the agent will under systemd
// (files only: the unit passes no PIPEOPS_* variables) and validates it.
func (in *Installer) validate() error {
	main := in.path(paths.ConfigFile)
	if _, err := os.Stat(main); errors.Is(err, os.ErrNotExist) {
		main = os.DevNull // no agent.yaml: an empty file counts as absent
	}
	cfg, _, err := config.Load(config.Options{
		Path: main, DropInDir: in.path(paths.DropInDir), TokenFallback: in.path(paths.TokenFile),
		EncryptedToken: in.path(paths.EncryptedTokenFile), Decrypt: DecryptToken(context.Background(), in.creds()),
		Getenv: func(string) string { return "" }, Environ: func() []string { return nil },
	})
	if err == nil {
		err = cfg.Validate()
	}
	if err != nil {
		return fmt.Errorf("the configuration would not start the agent, nothing was changed:\n%w\n"+
			"fix %s or the flags, then run pipeopsctl install again", err, paths.DropInDir)
	}
	return nil
}

// installUnit writes the unit through the service manager when it differs,
// plus the ExecStart= drop-in for a non-default binary directory.
func (in *Installer) installUnit(ctx context.Context, res *Result, tx *txn) error {
	if res.PackageOwned {
		// The package's unit in /usr/lib wins; a copy in /etc would shadow it.
		if _, err := os.Stat(in.path(paths.LocalUnit)); err == nil {
			in.say("warning: %s shadows the packaged unit; remove it unless you meant to override it", paths.LocalUnit)
		}
		_, err := in.o.Systemctl(ctx, "enable", systemd.UnitName)
		return err
	}
	// kardianos's Install refuses an existing file, and writes, enables and
	// daemon-reloads otherwise: replace means Uninstall then Install.
	cur, err := os.ReadFile(in.path(paths.LocalUnit))
	switch {
	case err == nil && string(cur) == systemd.Unit:
	case err == nil:
		in.say("updating %s", paths.LocalUnit)
		if err := in.svc.Uninstall(); err != nil {
			return fmt.Errorf("replace the old unit: %w", err)
		}
		if err := in.svc.Install(); err != nil {
			return fmt.Errorf("install the unit: %w", err)
		}
		res.Changed = append(res.Changed, "unit")
	default:
		in.say("installing %s", paths.LocalUnit)
		if err := in.svc.Install(); err != nil {
			return fmt.Errorf("install the unit: %w", err)
		}
		res.Changed = append(res.Changed, "unit")
	}
	c, err := in.writeExecDropIn(tx)
	if err != nil {
		return err
	}
	if c {
		res.Changed = append(res.Changed, "exec drop-in")
		if _, err := in.o.Systemctl(ctx, "daemon-reload"); err != nil {
			return err
		}
	}
	c, err = tx.write(in.path(in.UninstallScriptPath()), []byte(UninstallScript), 0o755)
	if err != nil {
		return fmt.Errorf("write the uninstall script: %w", err)
	}
	if c {
		res.Changed = append(res.Changed, "uninstall script")
	}
	return nil
}

// writeExecDropIn points ExecStart= at BinDir when it is not /usr/bin, and
// removes the drop-in otherwise.
func (in *Installer) writeExecDropIn(tx *txn) (bool, error) {
	p := in.execDropIn()
	if in.agentBinary("") == paths.AgentBinary {
		if err := os.Remove(p); err == nil {
			_ = os.Remove(filepath.Dir(p))
			return true, nil
		}
		return false, nil
	}
	body := fmt.Sprintf("# Written by pipeopsctl install: the binaries live in %s.\n[Service]\nExecStart=\nExecStart=%s run\n",
		in.o.BinDir, in.agentBinary(""))
	c, err := tx.write(p, []byte(body), 0o644)
	if err != nil {
		return false, fmt.Errorf("write %s: %w", p, err)
	}
	return c, nil
}

// start enables nothing (the unit manager did) and starts or restarts.
func (in *Installer) start(ctx context.Context, res *Result) error {
	if in.o.NoStart {
		res.Action = "not started"
		return nil
	}
	out, _ := in.o.Systemctl(ctx, "is-active", systemd.UnitName)
	active := strings.TrimSpace(out) == "active" || strings.TrimSpace(out) == "activating"
	var err error
	switch {
	case !active:
		in.say("starting %s", systemd.UnitName)
		res.Action, err = "started", in.svc.Start()
	case len(res.Changed) > 0 || in.o.Restart:
		in.say("restarting %s", systemd.UnitName)
		res.Action, err = "restarted", in.svc.Restart()
	default:
		res.Action = "unchanged"
	}
	if err != nil {
		return fmt.Errorf("%s %s: %w (see why with \"pipeopsctl logs -n 50\")", strings.TrimSuffix(res.Action, "ed"), systemd.UnitName, err)
	}
	return nil
}

// checkToken rejects what cannot be a token: blanks and control characters.
func checkToken(tok string) error {
	if strings.IndexFunc(tok, func(r rune) bool { return r <= ' ' || r == 0x7f }) >= 0 {
		return errors.New("the token contains spaces or control characters: pass exactly the token PipeOps showed you")
	}
	return nil
}
