package installer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"

	"github.com/pipeops/pipeops-vm-agent/internal/paths"
)

// TokenStorage says how Install keeps the install token on disk.
type TokenStorage string

// Token storages. Auto encrypts when the target is this host ("/") and
// systemd-creds works (systemd 250+), else it writes the plain 0600 file.
// Another root (tests, image builds) is never encrypted by Auto: the
// credential would be bound to the build host's key, not the target's.
const (
	TokenAuto      TokenStorage = "auto"
	TokenEncrypted TokenStorage = "encrypted"
	TokenPlain     TokenStorage = "plain"
)

// ParseTokenStorage accepts auto, encrypted and plain ("" is auto).
func ParseTokenStorage(s string) (TokenStorage, error) {
	switch TokenStorage(s) {
	case "", TokenAuto:
		return TokenAuto, nil
	case TokenEncrypted, TokenPlain:
		return TokenStorage(s), nil
	}
	return "", fmt.Errorf("--token-storage %q: want auto, encrypted or plain", s)
}

// ErrNoCreds means systemd-creds is not available (systemd older than 250).
var ErrNoCreds = errors.New("systemd-creds is not available (it needs systemd 250 or newer)")

// Creds encrypts and decrypts systemd credentials; SystemdCreds runs
// systemd-creds(1). The name is bound into the credential, and systemd
// refuses to hand it to the unit under another id.
type Creds interface {
	Encrypt(ctx context.Context, name string, plaintext []byte) ([]byte, error)
	Decrypt(ctx context.Context, name, path string) ([]byte, error)
}

// SystemdCreds runs systemd-creds from PATH.
type SystemdCreds struct{}

var _ Creds = SystemdCreds{}

// Encrypt runs "systemd-creds encrypt --name=NAME - -": the plaintext on
// stdin, never in argv. --with-key=auto binds it to the TPM2 chip when
// there is one, and to /var/lib/systemd/credential.secret always.
func (SystemdCreds) Encrypt(ctx context.Context, name string, plaintext []byte) ([]byte, error) {
	return runCreds(ctx, plaintext, "encrypt", "--name="+name, "-", "-")
}

// Decrypt runs "systemd-creds decrypt --name=NAME PATH -".
func (SystemdCreds) Decrypt(ctx context.Context, name, path string) ([]byte, error) {
	return runCreds(ctx, nil, "decrypt", "--name="+name, path, "-")
}

func runCreds(ctx context.Context, stdin []byte, args ...string) ([]byte, error) {
	bin, err := exec.LookPath("systemd-creds")
	if err != nil {
		return nil, ErrNoCreds
	}
	var out, errb bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(stdin), &out, &errb
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(errb.String())
		if msg == "" {
			msg = err.Error()
		}
		return nil, fmt.Errorf("systemd-creds %s: %s", args[0], msg)
	}
	return out.Bytes(), nil
}

// DecryptToken reads the encrypted token credential below root (for
// config.Options.Decrypt in pipeopsctl).
func DecryptToken(ctx context.Context, c Creds) func(path string) ([]byte, error) {
	if c == nil {
		c = SystemdCreds{}
	}
	return func(path string) ([]byte, error) { return c.Decrypt(ctx, paths.CredentialName, path) }
}

// storeToken writes tok as the configured storage and removes the other
// form, so exactly one of /etc/pipeops/token and the encrypted credential
// exists (the encrypted one would win). It reports whether anything changed.
// With tok empty it keeps the existing token, encrypting a plain one when the
// storage asks for encryption (an upgrade from an older install).
func (in *Installer) storeToken(ctx context.Context, tx *txn, tok string) (bool, error) {
	plain, enc := in.path(paths.TokenFile), in.path(paths.EncryptedTokenFile)
	cur, curErr := in.currentToken(ctx)
	if tok == "" {
		if curErr != nil {
			return false, curErr
		}
		tok = cur
	}
	if err := checkToken(tok); err != nil {
		return false, err
	}
	mode, err := in.tokenMode()
	if err != nil {
		return false, err
	}
	changed := false
	if mode == TokenEncrypted {
		_, encErr := os.Stat(enc)
		if cur != tok || encErr != nil {
			blob, err := in.creds().Encrypt(ctx, paths.CredentialName, []byte(tok+"\n"))
			if err != nil {
				if in.o.TokenStorage != TokenEncrypted {
					in.say("cannot encrypt the token (%v); keeping it in %s (mode 0600)", err, paths.TokenFile)
					return in.storePlain(tx, tok)
				}
				return false, fmt.Errorf("encrypt the token: %w", err)
			}
			if err := os.MkdirAll(in.path("/etc/credstore.encrypted"), 0o700); err != nil {
				return false, err
			}
			if _, err := tx.write(enc, blob, 0o600); err != nil {
				return false, fmt.Errorf("write %s: %w", paths.EncryptedTokenFile, err)
			}
			in.say("stored the token as an encrypted systemd credential in %s", paths.EncryptedTokenFile)
			changed = true
		}
		removed, err := tx.remove(plain)
		if err != nil {
			return false, fmt.Errorf("remove the plain token %s: %w", paths.TokenFile, err)
		}
		return changed || removed, nil
	}
	return in.storePlain(tx, tok)
}

func (in *Installer) storePlain(tx *txn, tok string) (bool, error) {
	changed, err := tx.write(in.path(paths.TokenFile), []byte(tok+"\n"), 0o600)
	if err != nil {
		return false, fmt.Errorf("write token: %w", err)
	}
	removed, err := tx.remove(in.path(paths.EncryptedTokenFile))
	if err != nil {
		return false, fmt.Errorf("remove %s: %w", paths.EncryptedTokenFile, err)
	}
	return changed || removed, nil
}

// currentToken is the installed token: the encrypted credential first (it
// is what the unit loads), else the plain file.
func (in *Installer) currentToken(ctx context.Context) (string, error) {
	enc := in.path(paths.EncryptedTokenFile)
	if _, err := os.Stat(enc); err == nil {
		b, err := in.creds().Decrypt(ctx, paths.CredentialName, enc)
		if err != nil {
			return "", fmt.Errorf("cannot read the installed token %s: %w; pass the token again with --token-file FILE", paths.EncryptedTokenFile, err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	b, err := os.ReadFile(in.path(paths.TokenFile))
	if err != nil || strings.TrimSpace(string(b)) == "" {
		return "", fmt.Errorf("no token at %s: pass one with --token-file FILE (or on stdin)", paths.TokenFile)
	}
	return strings.TrimSpace(string(b)), nil
}

// tokenMode resolves Auto: encrypted on this host when systemd-creds is
// there, plain otherwise.
func (in *Installer) tokenMode() (TokenStorage, error) {
	switch in.o.TokenStorage {
	case TokenPlain:
		return TokenPlain, nil
	case TokenEncrypted:
		if _, err := exec.LookPath("systemd-creds"); err != nil {
			return "", fmt.Errorf("--token-storage encrypted: %w; use --token-storage plain", ErrNoCreds)
		}
		return TokenEncrypted, nil
	}
	if _, err := exec.LookPath("systemd-creds"); err == nil && in.path("/") == "/" {
		return TokenEncrypted, nil
	}
	return TokenPlain, nil
}

func (in *Installer) creds() Creds { return SystemdCreds{} }
