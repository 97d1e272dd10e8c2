// Package paths names the agent's files and directories on a host. It honours
// the directories systemd hands a unit ($STATE_DIRECTORY, $RUNTIME_DIRECTORY,
// $CREDENTIALS_DIRECTORY). Standard library only.
package paths

import (
	"os"
	"path/filepath"
	"strings"
)

// Canonical names and locations.
const (
	UnitName    = "pipeops-agent.service"
	ServiceName = "pipeops-agent"
	ConfigDir   = "/etc/pipeops"
	ConfigFile  = "/etc/pipeops/agent.yaml"
	DropInDir   = "/etc/pipeops/agent.d"
	TokenFile   = "/etc/pipeops/token"
	// EncryptedTokenFile is the token as an encrypted systemd credential
	// (systemd-creds, systemd 250+), found by the unit's
	// LoadCredentialEncrypted=token:pipeops-agent.token in systemd's
	// credential store. Where it exists, TokenFile does not.
	EncryptedTokenFile = "/etc/credstore.encrypted/pipeops-agent.token"
	// CredentialName is the credential's id: $CREDENTIALS_DIRECTORY/token.
	CredentialName = "token"
	DefaultsFile   = "/etc/default/pipeops-agent"
	DefaultState   = "/var/lib/pipeops"
	DefaultRuntime = "/run/pipeops"
	DefaultCache   = "/var/cache/pipeops"
	SocketName     = "agent.sock"
	StateFileName  = "state.json"
	AgentBinary    = "/usr/bin/pipeops-agent"
	CtlBinary      = "/usr/bin/pipeopsctl"
	HelmBinary     = "/usr/bin/pipeops-agent-helm" // the agent's Helm worker
	PackagedUnit   = "/usr/lib/systemd/system/pipeops-agent.service"
	LocalUnit      = "/etc/systemd/system/pipeops-agent.service"
)

// Shell completion scripts of pipeopsctl, in each shell's system directory.
// The packages ship them; install.sh writes those whose directory exists,
// and "pipeopsctl uninstall" removes them again.
const (
	BashCompletion      = "/usr/share/bash-completion/completions/pipeopsctl"
	ZshVendorCompletion = "/usr/share/zsh/vendor-completions/_pipeopsctl" // Debian, Ubuntu
	ZshSiteCompletion   = "/usr/share/zsh/site-functions/_pipeopsctl"     // Fedora, RHEL, Arch
	FishCompletion      = "/usr/share/fish/vendor_completions.d/pipeopsctl.fish"
)

// CompletionFiles lists the completion scripts above.
func CompletionFiles() []string {
	return []string{BashCompletion, ZshVendorCompletion, ZshSiteCompletion, FishCompletion}
}

// firstDir returns the first entry of a colon-separated systemd directory
// variable, or def when it is unset.
func firstDir(env, def string) string {
	if v := os.Getenv(env); v != "" {
		return strings.Split(v, ":")[0]
	}
	return def
}

// StateDir is where state.json lives: $STATE_DIRECTORY under systemd.
func StateDir() string { return firstDir("STATE_DIRECTORY", DefaultState) }

// RuntimeDir holds the local API socket: $RUNTIME_DIRECTORY under systemd.
func RuntimeDir() string { return firstDir("RUNTIME_DIRECTORY", DefaultRuntime) }

// CacheDir is safe to delete: Helm's repository and chart cache.
func CacheDir() string { return firstDir("CACHE_DIRECTORY", DefaultCache) }

// Socket is the default local API socket path.
func Socket() string { return filepath.Join(RuntimeDir(), SocketName) }

// CredentialToken is the token systemd's LoadCredential= hands the unit, or
// "" when the unit was started without credentials.
func CredentialToken() string {
	if d := os.Getenv("CREDENTIALS_DIRECTORY"); d != "" {
		return filepath.Join(d, "token")
	}
	return ""
}
