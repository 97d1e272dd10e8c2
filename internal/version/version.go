// Package version holds the build's version, commit and date, set at link
// time with -ldflags "-X github.com/pipeops/pipeops-vm-agent/internal/version.Version=…".
// It imports only the standard library so that every binary can use it.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Version, Commit and Date are stamped by the linker (see Makefile and .goreleaser.yaml).
var (
	Version = "dev"
	Commit  = ""
	Date    = ""
)

// Info is the build identity served on /version and by `version` commands.
type Info struct {
	Version   string `json:"version"`
	GitCommit string `json:"git_commit"`
	BuildDate string `json:"build_date"`
	GoVersion string `json:"go_version"`
}

// Get returns the build identity. When the linker did not stamp a commit
// (a plain `go build`), the VCS revision recorded by the Go toolchain is used.
func Get() Info {
	commit, date := Commit, Date
	if commit == "" || date == "" {
		if bi, ok := debug.ReadBuildInfo(); ok {
			for _, s := range bi.Settings {
				switch {
				case s.Key == "vcs.revision" && commit == "":
					commit = s.Value
				case s.Key == "vcs.time" && date == "":
					date = s.Value
				}
			}
		}
	}
	if commit == "" {
		commit = "unknown"
	}
	if date == "" {
		date = "unknown"
	}
	return Info{Version: Version, GitCommit: commit, BuildDate: date, GoVersion: runtime.Version()}
}

// String is the one-line form printed by `pipeops-agent version`.
func (i Info) String() string {
	c := i.GitCommit
	if len(c) > 12 {
		c = c[:12]
	}
	return fmt.Sprintf("%s (commit %s, built %s, %s)", i.Version, c, i.BuildDate, i.GoVersion)
}
