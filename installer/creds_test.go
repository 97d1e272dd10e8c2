package installer

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/pipeops/pipeops-vm-agent/internal/config"
	"github.com/pipeops/pipeops-vm-agent/internal/paths"
)

// fakeCreds stands in for systemd-creds on PATH: "encrypt --name=N - -"
// wraps stdin in base64 with the name, "decrypt --name=N FILE -" checks the
// name and unwraps. Every argv is logged, to prove the token is never in it.
const fakeCreds = `#!/bin/sh
echo "$*" >> "$STUB_DIR/systemd-creds.log"
case "$1" in
encrypt) printf 'FAKECRED %s ' "$2"; base64 -w0; echo ;;
decrypt) read -r magic name data < "$3"; [ "$name" = "$2" ] || { echo "credential name mismatch" >&2; exit 1; }; echo "$data" | base64 -d ;;
*) exit 2 ;;
esac
`

func stubCreds(t *testing.T) (argv func() string) {
	t.Helper()
	dir := os.Getenv("STUB_DIR") // stubSystemctl first: one stub directory on PATH
	if dir == "" {
		t.Fatal("call stubSystemctl before stubCreds")
	}
	if err := os.WriteFile(filepath.Join(dir, "systemd-creds"), []byte(fakeCreds), 0o755); err != nil {
		t.Fatal(err)
	}
	return func() string { b, _ := os.ReadFile(filepath.Join(dir, "systemd-creds.log")); return string(b) }
}

func TestTheTokenIsStoredAsAnEncryptedCredentialAndNeverInPlainText(t *testing.T) {
	stubSystemctl(t)
	argv := stubCreds(t)
	root := t.TempDir()
	o := Options{Token: "tok-secret-123", TokenStorage: TokenEncrypted}
	res, err := newInstaller(t, root, o).Install(ctx)
	if err != nil {
		t.Fatal(err)
	}
	enc := filepath.Join(root, paths.EncryptedTokenFile)
	if b := read(t, enc); strings.Contains(b, "tok-secret-123") || !strings.HasPrefix(b, "FAKECRED --name=token ") {
		t.Errorf("credential on disk = %q; want it encrypted under the name token", b)
	}
	if m := mode(t, enc); m != 0o600 {
		t.Errorf("credential mode = %v; want 0600", m)
	}
	if _, err := os.Stat(filepath.Join(root, paths.TokenFile)); err == nil {
		t.Error("the plain token file exists beside the encrypted credential")
	}
	if strings.Contains(argv(), "tok-secret-123") {
		t.Error("the token appeared in systemd-creds' argv")
	}
	if !slices.Contains(res.Changed, "token") {
		t.Errorf("changed = %q; want token", res.Changed)
	}

	// The same token again, or none: nothing changes (the credential is
	// decrypted and compared, since every encryption differs).
	for _, tok := range []config.Secret{"tok-secret-123", ""} {
		o.Token = tok
		res, err := newInstaller(t, root, o).Install(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Changed) != 0 {
			t.Errorf("reinstall with token %q changed %q; want nothing", tok.Reveal(), res.Changed)
		}
	}
}

func TestAPlainTokenIsEncryptedByTheNextInstallAndBackOnRequest(t *testing.T) {
	stubSystemctl(t)
	stubCreds(t)
	root := t.TempDir()
	if _, err := newInstaller(t, root, Options{Token: "tok-1", TokenStorage: TokenPlain}).Install(ctx); err != nil {
		t.Fatal(err)
	}
	plain, enc := filepath.Join(root, paths.TokenFile), filepath.Join(root, paths.EncryptedTokenFile)
	res, err := newInstaller(t, root, Options{TokenStorage: TokenEncrypted}).Install(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(plain); err == nil || !slices.Contains(res.Changed, "token") {
		t.Fatalf("after encrypting: plain file exists=%v, changed=%q", err == nil, res.Changed)
	}
	if _, err := os.Stat(enc); err != nil {
		t.Fatal(err)
	}
	if _, err := newInstaller(t, root, Options{TokenStorage: TokenPlain}).Install(ctx); err != nil {
		t.Fatal(err)
	}
	if got := read(t, plain); got != "tok-1\n" {
		t.Errorf("plain token = %q; want the decrypted one", got)
	}
	if _, err := os.Stat(enc); err == nil {
		t.Error("the encrypted credential survived --token-storage plain; it would win over the plain file")
	}
}

func TestAutoStorageNeverEncryptsForAnotherRoot(t *testing.T) {
	stubSystemctl(t)
	argv := stubCreds(t)
	root := t.TempDir()
	if _, err := newInstaller(t, root, Options{Token: "tok-1"}).Install(ctx); err != nil {
		t.Fatal(err)
	}
	if got := read(t, filepath.Join(root, paths.TokenFile)); got != "tok-1\n" || argv() != "" {
		t.Errorf("token = %q, systemd-creds calls %q; want the plain file and no encryption", got, argv())
	}
}

func TestPurgeRemovesTheEncryptedCredential(t *testing.T) {
	stubSystemctl(t)
	stubCreds(t)
	root := t.TempDir()
	in := newInstaller(t, root, Options{Token: "tok-1", TokenStorage: TokenEncrypted})
	if _, err := in.Install(ctx); err != nil {
		t.Fatal(err)
	}
	removed, err := in.Uninstall(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, paths.EncryptedTokenFile)); err == nil || !slices.Contains(removed, paths.EncryptedTokenFile) {
		t.Errorf("purge left the encrypted credential (removed %q)", removed)
	}
}
