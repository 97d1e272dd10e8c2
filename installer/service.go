package installer

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/kardianos/service"

	"github.com/pipeops/pipeops-vm-agent/internal/paths"
	"github.com/pipeops/pipeops-vm-agent/systemd"
)

// Service is the part of kardianos/service the installer uses. Tests supply
// their own; on a real host it is kardianos's systemd backend configured
// with the embedded unit as its SystemdScript.
type Service interface {
	Platform() string
	Install() error
	Uninstall() error
	Start() error
	Stop() error
	Restart() error
}

// PlatformSystemd is what kardianos/service reports when PID 1 is systemd.
const PlatformSystemd = "linux-systemd"

// ErrNoSystemd means the host does not run systemd as PID 1.
var ErrNoSystemd = errors.New("this host does not run systemd as PID 1")

// noopInterface satisfies kardianos's Interface: we never call Run.
type noopInterface struct{}

func (noopInterface) Start(service.Service) error { return nil }
func (noopInterface) Stop(service.Service) error  { return nil }

// NewSystemService returns kardianos/service's backend for this host. The
// unit text is ours in full: kardianos's default lacks Type=notify, the
// watchdog and every sandboxing line, and scores 9.6 (platform.md §2).
// EnvVars, Dependencies and LogOutput stay unset on purpose.
func NewSystemService(agentBinary string) (Service, error) {
	s, err := service.New(noopInterface{}, &service.Config{
		Name:        paths.ServiceName,
		DisplayName: "PipeOps agent",
		Description: "PipeOps agent",
		Executable:  agentBinary,
		Arguments:   []string{"run"},
		Option:      service.KeyValue{"SystemdScript": systemd.Unit},
	})
	if err != nil {
		return nil, fmt.Errorf("set up the service manager: %w", err)
	}
	return s, nil
}

// dirService manages the unit below a root directory instead of /. It lets
// tests (and image builders) install into a tree; systemctl still comes from
// PATH, which tests fill with a stub that records its argv.
type dirService struct {
	root      string
	systemctl func(ctx context.Context, args ...string) (string, error)
}

func (d *dirService) Platform() string { return PlatformSystemd }

func (d *dirService) unitPath() string { return filepath.Join(d.root, paths.LocalUnit) }

func (d *dirService) Install() error {
	p := d.unitPath()
	if _, err := os.Stat(p); err == nil {
		return fmt.Errorf("init already exists: %s", p)
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(p, []byte(systemd.Unit), 0o644); err != nil {
		return err
	}
	if _, err := d.systemctl(context.Background(), "enable", systemd.UnitName); err != nil {
		return err
	}
	_, err := d.systemctl(context.Background(), "daemon-reload")
	return err
}

func (d *dirService) Uninstall() error {
	if _, err := d.systemctl(context.Background(), "disable", systemd.UnitName); err != nil {
		return err
	}
	if err := os.Remove(d.unitPath()); err != nil {
		return err
	}
	_, err := d.systemctl(context.Background(), "daemon-reload")
	return err
}

func (d *dirService) action(a string) error {
	_, err := d.systemctl(context.Background(), a, systemd.UnitName)
	return err
}

func (d *dirService) Start() error   { return d.action("start") }
func (d *dirService) Stop() error    { return d.action("stop") }
func (d *dirService) Restart() error { return d.action("restart") }

// execSystemctl runs systemctl from PATH and folds its stderr into the error.
func execSystemctl(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "systemctl", args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			return string(out), fmt.Errorf("systemctl %s: %w: %s", strings.Join(args, " "), err, msg)
		}
		return string(out), fmt.Errorf("systemctl %s: %w", strings.Join(args, " "), err)
	}
	return string(out), nil
}
