package installer

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/pipeops/pipeops-vm-agent/internal/paths"
	"github.com/pipeops/pipeops-vm-agent/systemd"
)

// ErrPackageOwned means a deb or rpm installed the agent; its package
// manager removes it.
var ErrPackageOwned = errors.New("pipeops-agent was installed from a package")

// Uninstall stops and disables the agent and removes the unit, its drop-in,
// the binaries and the uninstall script. purge also removes the token,
// configuration, state and cache (the token in either form). A missing piece is not an error, so it
// can finish an earlier, interrupted removal.
func (in *Installer) Uninstall(ctx context.Context, purge bool) ([]string, error) {
	if in.PackageOwned() {
		how := "sudo apt-get remove pipeops-agent (purge: apt-get purge) or sudo dnf remove pipeops-agent"
		return nil, fmt.Errorf("%w: remove it with %s", ErrPackageOwned, how)
	}
	if err := in.CheckPlatform(); err != nil {
		return nil, err
	}
	var removed []string
	if _, err := os.Stat(in.path(paths.LocalUnit)); err == nil {
		out, _ := in.o.Systemctl(ctx, "is-active", systemd.UnitName)
		if s := strings.TrimSpace(out); s == "active" || s == "activating" || s == "reloading" {
			in.say("stopping %s", systemd.UnitName)
			if err := in.svc.Stop(); err != nil {
				return nil, fmt.Errorf("stop %s: %w", systemd.UnitName, err)
			}
		}
		if err := in.svc.Uninstall(); err != nil {
			return nil, fmt.Errorf("remove the unit: %w", err)
		}
		removed = append(removed, paths.LocalUnit)
	}
	dropDir := filepath.Dir(in.execDropIn())
	if rm(in.execDropIn()) {
		removed = append(removed, strings.TrimPrefix(in.execDropIn(), filepath.Clean(in.o.Root)))
		_ = os.Remove(dropDir)
		_, _ = in.o.Systemctl(ctx, "daemon-reload")
	}
	for _, p := range append([]string{
		in.agentBinary(""), filepath.Join(in.o.BinDir, filepath.Base(paths.CtlBinary)),
		filepath.Join(in.o.BinDir, filepath.Base(paths.HelmBinary)), in.UninstallScriptPath(),
	}, paths.CompletionFiles()...) { // install.sh wrote the completion scripts
		if rm(in.path(p)) {
			removed = append(removed, p)
		}
	}
	if purge {
		for _, p := range []string{paths.ConfigDir, paths.EncryptedTokenFile, paths.DefaultState, paths.DefaultCache, paths.DefaultsFile} {
			if _, err := os.Lstat(in.path(p)); err != nil {
				continue
			}
			if err := os.RemoveAll(in.path(p)); err != nil {
				return removed, fmt.Errorf("purge %s: %w", p, err)
			}
			removed = append(removed, p)
		}
	}
	return removed, nil
}

func rm(p string) bool { return os.Remove(p) == nil }

// StopIfActive stops the agent when it runs (before pipeopsctl uninstall
// --purge removes its cluster identity, which a running agent would re-create).
func (in *Installer) StopIfActive(ctx context.Context) error {
	out, _ := in.o.Systemctl(ctx, "is-active", systemd.UnitName)
	if s := strings.TrimSpace(out); s != "active" && s != "activating" && s != "reloading" {
		return nil
	}
	in.say("stopping %s", systemd.UnitName)
	if err := in.svc.Stop(); err != nil {
		return fmt.Errorf("stop %s: %w", systemd.UnitName, err)
	}
	return nil
}

// Start starts the unit (systemctl start waits for READY=1).
func (in *Installer) Start() error { return in.control("start", in.svc.Start) }

// Stop stops the unit.
func (in *Installer) Stop() error { return in.control("stop", in.svc.Stop) }

// Restart restarts the unit.
func (in *Installer) Restart() error { return in.control("restart", in.svc.Restart) }

func (in *Installer) control(verb string, f func() error) error {
	if err := in.CheckPlatform(); err != nil {
		return err
	}
	if err := f(); err != nil {
		return fmt.Errorf("%s %s: %w (see why with \"pipeopsctl logs -n 50\")", verb, systemd.UnitName, err)
	}
	return nil
}
