#!/usr/bin/env bats
# Tests for installer/install.sh and installer/uninstall.sh on the host,
# without systemd: ROOT-relative /etc and /run (PIPEOPS_INSTALL_ROOT), stub
# systemctl/dpkg-query/rpm on PATH, stub binaries in a fake release served
# by a local HTTP server. The real thing runs in scripts/host/nspawn.sh.

INSTALL_SH="$BATS_TEST_DIRNAME/../install.sh"
UNINSTALL_SH="$BATS_TEST_DIRNAME/../uninstall.sh"

setup_file() {
	export REL="$BATS_FILE_TMPDIR/release"
	mkdir -p "$REL/src" "$REL/srv/download/v9.9.9" "$REL/srv/latest/download"
	# Stub binaries: pipeopsctl records its argv and the token it was handed.
	cat >"$REL/src/pipeopsctl" <<'STUB'
#!/bin/sh
echo "$*" >>"$STUB_LOG/pipeopsctl.argv"
[ "$1" = completion ] && { echo "# $2 completion for pipeopsctl"; exit 0; }
while [ $# -gt 0 ]; do
	if [ "$1" = --token-file ] && [ "$2" = - ]; then
		cat >>"$STUB_LOG/pipeopsctl.token"
	elif [ "$1" = --token-file ]; then
		cat "$2" >>"$STUB_LOG/pipeopsctl.token"
		stat -c %a "$2" >>"$STUB_LOG/pipeopsctl.mode"
	fi
	shift
done
exit 0
STUB
	printf '#!/bin/sh\necho "pipeops-agent 9.9.9 (stub)"\n' >"$REL/src/pipeops-agent"
	printf '#!/bin/sh\necho "pipeops-agent-helm 9.9.9 (stub)"\n' >"$REL/src/pipeops-agent-helm"
	chmod +x "$REL/src/"*
	for arch in amd64 arm64; do
		tar -czf "$REL/srv/latest/download/pipeops-agent_linux_$arch.tar.gz" -C "$REL/src" pipeops-agent pipeopsctl pipeops-agent-helm
	done
	(cd "$REL/srv/latest/download" && sha256sum ./*.tar.gz | sed 's# \./# #' >checksums.txt)
	cp "$REL/srv/latest/download/"* "$REL/srv/download/v9.9.9/"
	PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
	export PORT
	python3 -u -m http.server --bind 127.0.0.1 --directory "$REL/srv" "$PORT" >"$BATS_FILE_TMPDIR/http.log" 2>&1 &
	echo $! >"$BATS_FILE_TMPDIR/http.pid"
	for _ in $(seq 50); do
		curl -fsS -o /dev/null "http://127.0.0.1:$PORT/latest/download/checksums.txt" && return 0
		sleep 0.1
	done
	echo "the test HTTP server did not start" >&2
	return 1
}

teardown_file() {
	kill "$(cat "$BATS_FILE_TMPDIR/http.pid")" 2>/dev/null || true
}

setup() {
	export ROOT="$BATS_TEST_TMPDIR/root" STUB_LOG="$BATS_TEST_TMPDIR/log"
	mkdir -p "$ROOT/run/systemd/system" "$STUB_LOG" "$BATS_TEST_TMPDIR/stubs"
	for t in systemctl dpkg-query rpm; do
		printf '#!/bin/sh\necho "%s $*" >>"$STUB_LOG/%s.argv"\nexit 1\n' "$t" "$t" >"$BATS_TEST_TMPDIR/stubs/$t"
		chmod +x "$BATS_TEST_TMPDIR/stubs/$t"
	done
	export PATH="$BATS_TEST_TMPDIR/stubs:$PATH"
	export PIPEOPS_INSTALL_ROOT="$ROOT" INSTALL_PIPEOPS_BIN_DIR="$ROOT/usr/bin"
	export PIPEOPS_INSTALL_BASE_URL="http://127.0.0.1:$PORT"
	unset PIPEOPS_TOKEN PIPEOPS_TOKEN_FILE INSTALL_PIPEOPS_VERSION INSTALL_PIPEOPS_SKIP_DOWNLOAD INSTALL_PIPEOPS_DRY_RUN
}

@test "install.sh is POSIX sh and shellcheck-clean" {
	shellcheck -s sh "$INSTALL_SH" "$UNINSTALL_SH"
	dash -n "$INSTALL_SH"
	dash -n "$UNINSTALL_SH"
	[ "$(tail -n 1 "$INSTALL_SH")" = '[ "${PIPEOPS_INSTALL_SOURCED:-}" = 1 ] || main "$@"' ]
}

@test "architecture names map to release names, and others are refused" {
	PIPEOPS_INSTALL_SOURCED=1 . "$INSTALL_SH"
	setup_env
	for pair in x86_64:amd64 amd64:amd64 aarch64:arm64 arm64:arm64; do
		PIPEOPS_ARCH=${pair%%:*} detect_platform
		[ "$ARCH" = "${pair##*:}" ]
	done
	run env PIPEOPS_ARCH=riscv64 PIPEOPS_INSTALL_SOURCED=1 sh -c '. "$0"; setup_env; detect_platform' "$INSTALL_SH"
	[ "$status" -eq 1 ]
	[[ "$output" == *"unsupported architecture riscv64"* ]]
}

@test "downloads, verifies the sha256, installs and hands the token over on stdin, never in argv or a file" {
	PIPEOPS_TOKEN=tok-secret-123 PIPEOPS_API_URL=https://cp.example.com PIPEOPS_CLUSTER_NAME=edge \
		run dash "$INSTALL_SH"
	[ "$status" -eq 0 ] || { echo "$output"; false; }
	[[ "$output" == *"sha256 verified"* ]]
	[ -x "$ROOT/usr/bin/pipeops-agent" ] && [ -x "$ROOT/usr/bin/pipeopsctl" ] && [ -x "$ROOT/usr/bin/pipeops-agent-helm" ]
	argv=$(cat "$STUB_LOG/pipeopsctl.argv")
	[[ "$argv" == "install --token-file - --api-url https://cp.example.com --cluster-name edge --bin-dir $ROOT/usr/bin --restart --root $ROOT" ]]
	[[ "$argv" != *tok-secret-123* ]]
	[ "$(cat "$STUB_LOG/pipeopsctl.token")" = tok-secret-123 ]
	# The script itself wrote no file holding the token.
	! grep -rqs tok-secret-123 "$ROOT/etc"
}

@test "a token file is handed over by name" {
	printf 'tok-from-file\n' >"$BATS_TEST_TMPDIR/tok"
	chmod 600 "$BATS_TEST_TMPDIR/tok"
	PIPEOPS_TOKEN_FILE="$BATS_TEST_TMPDIR/tok" run dash "$INSTALL_SH"
	[ "$status" -eq 0 ] || { echo "$output"; false; }
	[[ "$(cat "$STUB_LOG/pipeopsctl.argv")" == "install --token-file $BATS_TEST_TMPDIR/tok "* ]]
	[ "$(cat "$STUB_LOG/pipeopsctl.token")" = tok-from-file ]
}

@test "a second run with the same release does not ask for a restart" {
	PIPEOPS_TOKEN=t run dash "$INSTALL_SH"
	[ "$status" -eq 0 ]
	: >"$STUB_LOG/pipeopsctl.argv"
	mkdir -p "$ROOT/etc/pipeops" && echo t >"$ROOT/etc/pipeops/token"
	run dash "$INSTALL_SH"
	[ "$status" -eq 0 ] || { echo "$output"; false; }
	[[ "$output" == *"keeping the token"* ]]
	[ "$(cat "$STUB_LOG/pipeopsctl.argv")" = "install --bin-dir $ROOT/usr/bin --root $ROOT" ]
}

@test "an installed encrypted credential counts as the token" {
	mkdir -p "$ROOT/etc/credstore.encrypted" && echo encrypted-blob >"$ROOT/etc/credstore.encrypted/pipeops-agent.token"
	run setsid dash "$INSTALL_SH" </dev/null
	[ "$status" -eq 0 ] || { echo "$output"; false; }
	[[ "$output" == *"keeping the installed token (encrypted credential"* ]]
	[[ "$(cat "$STUB_LOG/pipeopsctl.argv")" != *--token-file* ]]
}

@test "downloads use https with TLS 1.2 or later, with curl and with wget" {
	PIPEOPS_INSTALL_SOURCED=1 . "$INSTALL_SH"
	PIPEOPS_INSTALL_BASE_URL=https://releases.example.com
	setup_env
	check_base_url
	DRY_RUN=1
	DOWNLOADER=curl run download https://releases.example.com/x /tmp/x
	[ "$output" = "+ curl --proto =https --tlsv1.2 -fsSL --retry 3 -o /tmp/x https://releases.example.com/x" ]
	DOWNLOADER=wget run download https://releases.example.com/x /tmp/x
	[ "$output" = "+ wget --https-only -q -O /tmp/x https://releases.example.com/x" ]
}

@test "a plain http release URL is refused unless it is a local test server" {
	for url in http://releases.example.com http://10.0.0.5:8080 ftp://releases.example.com http://127.0.0.1.example.com; do
		PIPEOPS_INSTALL_BASE_URL=$url PIPEOPS_TOKEN=t run dash "$INSTALL_SH"
		[ "$status" -eq 1 ] || { echo "$url: $output"; false; }
		[[ "$output" == *"downloads must use https"* ]]
	done
	[ ! -e "$ROOT/usr/bin/pipeops-agent" ]
}

@test "a specific version downloads from download/VERSION" {
	INSTALL_PIPEOPS_VERSION=v9.9.9 PIPEOPS_TOKEN=t run dash "$INSTALL_SH"
	[ "$status" -eq 0 ] || { echo "$output"; false; }
	grep -q 'GET /download/v9.9.9/pipeops-agent_linux_' "$BATS_FILE_TMPDIR/http.log"
}

@test "a checksum mismatch installs nothing" {
	bad="$BATS_TEST_TMPDIR/badsrv/latest/download"
	mkdir -p "$bad"
	cp "$REL/srv/latest/download/"* "$bad/"
	echo corrupt >>"$bad/pipeops-agent_linux_amd64.tar.gz"
	echo corrupt >>"$bad/pipeops-agent_linux_arm64.tar.gz"
	python3 -u -m http.server --bind 127.0.0.1 --directory "$BATS_TEST_TMPDIR/badsrv" 0 >"$BATS_TEST_TMPDIR/bad.log" 2>&1 &
	pid=$!
	for _ in $(seq 50); do
		port=$(grep -o 'port [0-9]*' "$BATS_TEST_TMPDIR/bad.log" | awk '{print $2}')
		[ -n "$port" ] && break
		sleep 0.1
	done
	PIPEOPS_INSTALL_BASE_URL="http://127.0.0.1:$port" PIPEOPS_TOKEN=t run dash "$INSTALL_SH"
	kill "$pid"
	[ "$status" -eq 1 ]
	[[ "$output" == *"sha256 mismatch"* ]]
	[ ! -e "$ROOT/usr/bin/pipeops-agent" ]
	[ ! -e "$STUB_LOG/pipeopsctl.argv" ]
}

@test "skip-download uses prebuilt binaries from PIPEOPS_BINARY_DIR" {
	INSTALL_PIPEOPS_SKIP_DOWNLOAD=true PIPEOPS_BINARY_DIR="$REL/src" PIPEOPS_INSTALL_BASE_URL=http://127.0.0.1:1 PIPEOPS_TOKEN=t \
		run dash "$INSTALL_SH"
	[ "$status" -eq 0 ] || { echo "$output"; false; }
	[[ "$output" == *"skip-download"* ]]
	cmp "$REL/src/pipeopsctl" "$ROOT/usr/bin/pipeopsctl"
}

@test "the dry run prints the commands and changes nothing" {
	INSTALL_PIPEOPS_DRY_RUN=1 PIPEOPS_TOKEN=tok-dry run dash "$INSTALL_SH"
	[ "$status" -eq 0 ] || { echo "$output"; false; }
	[[ "$output" == *"+ curl --proto =http,https -fsSL --retry 3 -o "*"/checksums.txt http://127.0.0.1:$PORT/latest/download/checksums.txt"* ]]
	[[ "$output" == *"+ $ROOT/usr/bin/pipeopsctl install --token-file -"*"(the token on stdin)"* ]]
	[[ "$output" != *tok-dry* ]]
	[ ! -e "$ROOT/usr/bin" ] && [ ! -e "$ROOT/etc/pipeops" ]
}

@test "it refuses to run without systemd" {
	rmdir "$ROOT/run/systemd/system"
	PIPEOPS_TOKEN=t run dash "$INSTALL_SH"
	[ "$status" -eq 1 ]
	[[ "$output" == *"does not run systemd as PID 1"* ]]
}

@test "it refuses to run over a package install" {
	printf '#!/bin/sh\nexit 0\n' >"$BATS_TEST_TMPDIR/stubs/dpkg-query"
	PIPEOPS_TOKEN=t run dash "$INSTALL_SH"
	[ "$status" -eq 1 ]
	[[ "$output" == *"installed from a .deb package"* ]]
}

@test "without any token and no terminal it says how to pass one" {
	run setsid dash "$INSTALL_SH" </dev/null
	[ "$status" -eq 1 ]
	[[ "$output" == *"PIPEOPS_TOKEN_FILE"* ]]
}

@test "the uninstall script hands over to pipeopsctl uninstall --purge and deletes itself" {
	mkdir -p "$ROOT/usr/bin"
	cp "$UNINSTALL_SH" "$ROOT/usr/bin/pipeops-uninstall.sh"
	cp "$REL/src/pipeopsctl" "$ROOT/usr/bin/pipeopsctl"
	run dash "$ROOT/usr/bin/pipeops-uninstall.sh"
	[ "$status" -eq 0 ] || { echo "$output"; false; }
	[ "$(cat "$STUB_LOG/pipeopsctl.argv")" = "uninstall --purge --bin-dir $ROOT/usr/bin" ]
	[ ! -e "$ROOT/usr/bin/pipeops-uninstall.sh" ]
}

@test "without pipeopsctl the uninstall script removes everything by hand" {
	mkdir -p "$ROOT/usr/bin"
	cp "$UNINSTALL_SH" "$ROOT/usr/bin/pipeops-uninstall.sh"
	PIPEOPS_DRY_RUN=1 run dash "$ROOT/usr/bin/pipeops-uninstall.sh"
	[ "$status" -eq 0 ] || { echo "$output"; false; }
	[[ "$output" == *"+ rm -f $ROOT/usr/bin/pipeops-agent $ROOT/usr/bin/pipeopsctl $ROOT/usr/bin/pipeops-agent-helm"* ]]
	[[ "$output" == *"+ rm -rf /etc/pipeops /var/lib/pipeops /var/cache/pipeops /etc/default/pipeops-agent"* ]]
	[[ "$output" == *"+ rm -f /etc/credstore.encrypted/pipeops-agent.token"* ]]
	[ -e "$ROOT/usr/bin/pipeops-uninstall.sh" ]
}

@test "shell completions go into the shells' directories that exist, and a rerun leaves them alone" {
	mkdir -p "$ROOT/usr/share/bash-completion/completions" "$ROOT/usr/share/fish/vendor_completions.d"
	PIPEOPS_TOKEN=t run dash "$INSTALL_SH"
	[ "$status" -eq 0 ] || { echo "$output"; false; }
	[ "$(cat "$ROOT/usr/share/bash-completion/completions/pipeopsctl")" = "# bash completion for pipeopsctl" ]
	[ "$(cat "$ROOT/usr/share/fish/vendor_completions.d/pipeopsctl.fish")" = "# fish completion for pipeopsctl" ]
	[ ! -e "$ROOT/usr/share/zsh" ]
	grep -qx 'completion bash' "$STUB_LOG/pipeopsctl.argv"
	run grep -q 'completion zsh' "$STUB_LOG/pipeopsctl.argv"
	[ "$status" -ne 0 ]
	PIPEOPS_TOKEN=t run dash "$INSTALL_SH"
	[ "$status" -eq 0 ]
	[[ "$output" != *"installed $ROOT/usr/share/bash-completion"* ]]
	[ ! -e "$ROOT/usr/share/bash-completion/completions/pipeopsctl.new" ]
}
