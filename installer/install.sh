#!/bin/sh
# install.sh: install or update pipeops-agent on a systemd Linux host.
#
#   curl -sfL https://get.pipeops.io/agent | PIPEOPS_TOKEN_FILE=/path/to/token sh -
#   curl -sfL https://get.pipeops.io/agent | sudo sh -          (prompts for the token)
#
# It downloads the release tarball and checksums.txt, checks the sha256,
# installs pipeops-agent and pipeopsctl (and pipeopsctl's shell completion
# where the shells' directories exist), then hands over to
# "pipeopsctl install", which writes the unit, the token and the settings and
# (re)starts the service only when something changed. Running it again is safe.
#
# Knobs (environment):
#   PIPEOPS_TOKEN_FILE            file holding the install token (preferred)
#   PIPEOPS_TOKEN                 the token itself (kept out of argv and off the disk: it
#                                 reaches pipeopsctl on stdin; unset after use)
#                                 neither: keep the installed token, else prompt on /dev/tty
#   PIPEOPS_API_URL               control plane URL          -> pipeopsctl install --api-url
#   PIPEOPS_CLUSTER_NAME          cluster name               -> pipeopsctl install --cluster-name
#   INSTALL_PIPEOPS_VERSION       release tag, e.g. v1.2.3 (default: latest)      alias PIPEOPS_VERSION
#   PIPEOPS_INSTALL_BASE_URL      release base URL (default: GitHub releases)    alias PIPEOPS_DOWNLOAD_URL
#                                 files come from BASE/latest/download/FILE or BASE/download/VERSION/FILE;
#                                 https only (TLS 1.2+, redirects too), except http://127.0.0.1 or
#                                 http://localhost for a local test server
#   INSTALL_PIPEOPS_SKIP_DOWNLOAD true: use binaries from PIPEOPS_BINARY_DIR, or those already
#                                 in the bin dir                                  alias PIPEOPS_SKIP_DOWNLOAD
#   INSTALL_PIPEOPS_BIN_DIR       where the binaries go (default /usr/bin)
#   INSTALL_PIPEOPS_DRY_RUN       1: print each command instead of running it    alias PIPEOPS_DRY_RUN
#   PIPEOPS_ARCH                  amd64 or arm64 instead of uname -m
#   PIPEOPS_SKIP_START            true: enable the service but do not start it
#   PIPEOPS_FORCE_RESTART         true: restart even when nothing changed
#
# All code is in functions and main runs on the last line, so a truncated
# download runs nothing.

info() { printf '[pipeops] %s\n' "$*" >&2; }
fatal() {
	printf '[pipeops] ERROR: %s\n' "$*" >&2
	exit 1
}

# do_cmd executes a command, or prints it in dry-run mode.
do_cmd() {
	if [ "$DRY_RUN" = 1 ]; then
		printf '+ %s\n' "$*"
	else
		"$@"
	fi
}

is_true() {
	case "${1:-}" in
	1 | true | TRUE | yes | YES) return 0 ;;
	esac
	return 1
}

setup_env() {
	# ROOT only moves /etc and /run for the installer's own tests.
	ROOT=${PIPEOPS_INSTALL_ROOT:-}
	VERSION=${INSTALL_PIPEOPS_VERSION:-${PIPEOPS_VERSION:-latest}}
	BASE_URL=${PIPEOPS_INSTALL_BASE_URL:-${PIPEOPS_DOWNLOAD_URL:-https://github.com/pipeops/pipeops-vm-agent/releases}}
	BASE_URL=${BASE_URL%/}
	BIN_DIR=${INSTALL_PIPEOPS_BIN_DIR:-/usr/bin}
	SKIP_DOWNLOAD=false
	if is_true "${INSTALL_PIPEOPS_SKIP_DOWNLOAD:-${PIPEOPS_SKIP_DOWNLOAD:-}}"; then SKIP_DOWNLOAD=true; fi
	DRY_RUN=0
	if is_true "${INSTALL_PIPEOPS_DRY_RUN:-${PIPEOPS_DRY_RUN:-}}"; then DRY_RUN=1; fi
	CONF_DIR=$ROOT/etc/pipeops
	TOKEN_FILE=$CONF_DIR/token
	ENC_TOKEN_FILE=$ROOT/etc/credstore.encrypted/pipeops-agent.token
}

# check_base_url allows only https downloads. A plain http base URL is
# accepted on the loopback interface alone: a local test server, which no
# one on the network can stand in for.
check_base_url() {
	case "$BASE_URL" in
	https://*) LOCAL_HTTP=false ;;
	http://127.0.0.1 | http://127.0.0.1[:/]* | http://localhost | http://localhost[:/]* | http://\[::1\]*) LOCAL_HTTP=true ;;
	*) fatal "PIPEOPS_INSTALL_BASE_URL=$BASE_URL: downloads must use https (plain http is accepted only from 127.0.0.1 or localhost, for a local test server)" ;;
	esac
}

need_root() {
	[ "$DRY_RUN" = 1 ] && return 0
	[ "$(id -u)" = 0 ] && return 0
	# Re-run a saved script through sudo -E (the token stays in the
	# environment, never in argv); a piped script cannot be re-run.
	if [ -r "$0" ] && [ "${0##*/}" = install.sh ] && command -v sudo >/dev/null 2>&1; then
		info "re-running as root through sudo"
		exec sudo -E sh "$0" "$@"
	fi
	fatal "run this as root: curl -sfL URL | sudo sh -   (or sudo sh install.sh)"
}

detect_platform() {
	os=$(uname -s)
	[ "$os" = Linux ] || fatal "pipeops-agent runs on Linux only (this is $os)"
	ARCH=${PIPEOPS_ARCH:-$(uname -m)}
	case "$ARCH" in
	x86_64 | amd64) ARCH=amd64 ;;
	aarch64 | arm64) ARCH=arm64 ;;
	*) fatal "unsupported architecture $ARCH: releases exist for amd64 and arm64 (override with PIPEOPS_ARCH)" ;;
	esac
	if [ ! -d "$ROOT/run/systemd/system" ]; then
		fatal "this host does not run systemd as PID 1 (no /run/systemd/system); pipeops-agent needs systemd 247 or newer. In a container, run \"pipeops-agent run\" under your own supervisor."
	fi
	if command -v dpkg-query >/dev/null 2>&1 && dpkg-query -s pipeops-agent >/dev/null 2>&1; then
		fatal "pipeops-agent is installed from a .deb package; update it with apt (apt-get install --only-upgrade pipeops-agent), not with this script"
	fi
	if command -v rpm >/dev/null 2>&1 && rpm -q pipeops-agent >/dev/null 2>&1; then
		fatal "pipeops-agent is installed from an .rpm package; update it with dnf or yum, not with this script"
	fi
}

detect_tools() {
	if command -v curl >/dev/null 2>&1; then
		DOWNLOADER=curl
	elif command -v wget >/dev/null 2>&1; then
		DOWNLOADER=wget
	else
		fatal "neither curl nor wget is installed; install one of them"
	fi
	if command -v sha256sum >/dev/null 2>&1; then
		SHA256="sha256sum"
	elif command -v shasum >/dev/null 2>&1; then
		SHA256="shasum -a 256"
	else
		fatal "neither sha256sum nor shasum is installed; install coreutils"
	fi
}

# sha256 prints the hash of a file.
sha256() {
	$SHA256 "$1" | awk '{print $1}'
}

# get_token decides where the token comes from: TOKEN_SRC is a file to pass
# to pipeopsctl, TOKEN is the token for pipeopsctl's stdin (never written to
# disk by this script: pipeopsctl stores it, encrypted where systemd-creds
# works), or both are empty to keep the installed token.
get_token() {
	TOKEN_SRC=
	TOKEN=
	if [ -n "${PIPEOPS_TOKEN_FILE:-}" ]; then
		[ -r "$PIPEOPS_TOKEN_FILE" ] || fatal "cannot read PIPEOPS_TOKEN_FILE=$PIPEOPS_TOKEN_FILE"
		TOKEN_SRC=$PIPEOPS_TOKEN_FILE
		return 0
	fi
	tok=${PIPEOPS_TOKEN:-}
	unset PIPEOPS_TOKEN
	if [ -z "$tok" ] && [ -s "$ENC_TOKEN_FILE" ]; then
		info "keeping the installed token (encrypted credential $ENC_TOKEN_FILE)"
		return 0
	fi
	if [ -z "$tok" ] && [ -s "$TOKEN_FILE" ]; then
		info "keeping the token in $TOKEN_FILE"
		return 0
	fi
	if [ -z "$tok" ]; then
		# stdin is this script when piped from curl: ask the terminal.
		if [ "$DRY_RUN" != 1 ] && (: </dev/tty) 2>/dev/null; then
			printf 'PipeOps install token (input hidden): ' >/dev/tty
			stty -echo </dev/tty 2>/dev/null || true
			IFS= read -r tok </dev/tty || true
			stty echo </dev/tty 2>/dev/null || true
			printf '\n' >/dev/tty
		fi
	fi
	[ -n "$tok" ] || [ "$DRY_RUN" = 1 ] || fatal "no token: set PIPEOPS_TOKEN_FILE=/path/to/token (or PIPEOPS_TOKEN), or run from a terminal to be prompted"
	TOKEN=$tok
	TOKEN_SRC=-
	tok=
}

download() {
	# $1 = URL, $2 = output file. https and TLS 1.2+ only, redirects
	# included, so a redirect cannot downgrade to http.
	if [ "$LOCAL_HTTP" = true ]; then
		case "$DOWNLOADER" in
		curl) do_cmd curl --proto '=http,https' -fsSL --retry 3 -o "$2" "$1" ;;
		wget) do_cmd wget -q -O "$2" "$1" ;;
		esac
		return
	fi
	case "$DOWNLOADER" in
	curl) do_cmd curl --proto '=https' --tlsv1.2 -fsSL --retry 3 -o "$2" "$1" ;;
	wget) do_cmd wget --https-only -q -O "$2" "$1" ;;
	esac
}

release_url() {
	if [ "$VERSION" = latest ]; then
		printf '%s/latest/download/%s' "$BASE_URL" "$1"
	else
		printf '%s/download/%s/%s' "$BASE_URL" "$VERSION" "$1"
	fi
}

# fetch_binaries leaves pipeops-agent and pipeopsctl in SRC_DIR.
fetch_binaries() {
	if [ "$SKIP_DOWNLOAD" = true ]; then
		SRC_DIR=${PIPEOPS_BINARY_DIR:-$BIN_DIR}
		for b in pipeops-agent pipeopsctl pipeops-agent-helm; do
			[ -x "$SRC_DIR/$b" ] || fatal "skip-download: $SRC_DIR/$b is missing or not executable"
		done
		info "skip-download: using the binaries in $SRC_DIR"
		return 0
	fi
	tarball=pipeops-agent_linux_${ARCH}.tar.gz
	SRC_DIR=$TMP_DIR
	info "downloading $tarball ($VERSION) from $BASE_URL"
	download "$(release_url checksums.txt)" "$TMP_DIR/checksums.txt" || fatal "cannot download checksums.txt from $BASE_URL (version $VERSION)"
	download "$(release_url "$tarball")" "$TMP_DIR/$tarball" || fatal "cannot download $tarball from $BASE_URL (version $VERSION)"
	[ "$DRY_RUN" = 1 ] && return 0
	want=$(awk -v f="$tarball" '$2 == f || $2 == "*" f {print $1}' "$TMP_DIR/checksums.txt")
	[ -n "$want" ] || fatal "checksums.txt lists no $tarball"
	got=$(sha256 "$TMP_DIR/$tarball")
	[ "$want" = "$got" ] || fatal "sha256 mismatch for $tarball: checksums.txt says $want, the download is $got; nothing was installed"
	info "sha256 verified: $got"
	tar -xzf "$TMP_DIR/$tarball" -C "$TMP_DIR" pipeops-agent pipeopsctl pipeops-agent-helm || fatal "cannot unpack $tarball"
}

# install_binaries copies what differs; BIN_CHANGED=true when it did.
install_binaries() {
	BIN_CHANGED=false
	[ "$SRC_DIR" = "$BIN_DIR" ] && return 0
	do_cmd mkdir -p "$BIN_DIR"
	for b in pipeops-agent pipeopsctl pipeops-agent-helm; do
		if [ -f "$BIN_DIR/$b" ] && [ "$DRY_RUN" != 1 ] && [ "$(sha256 "$SRC_DIR/$b")" = "$(sha256 "$BIN_DIR/$b")" ]; then
			continue
		fi
		# A temporary name in the target directory, then mv: atomic, and a
		# running agent keeps its old inode.
		do_cmd install -m 0755 "$SRC_DIR/$b" "$BIN_DIR/.$b.new"
		do_cmd mv -f "$BIN_DIR/.$b.new" "$BIN_DIR/$b"
		BIN_CHANGED=true
		info "installed $BIN_DIR/$b"
	done
	if command -v restorecon >/dev/null 2>&1; then
		do_cmd restorecon -R "$BIN_DIR/pipeops-agent" "$BIN_DIR/pipeopsctl" "$BIN_DIR/pipeops-agent-helm" 2>/dev/null || true
	fi
}

# install_completions writes pipeopsctl's shell completion scripts into the
# shells' system directories that exist here (the packages ship the same
# files); "pipeopsctl uninstall" removes them. A failure only warns.
install_completions() {
	for spec in bash:/usr/share/bash-completion/completions/pipeopsctl \
		zsh:/usr/share/zsh/vendor-completions/_pipeopsctl \
		zsh:/usr/share/zsh/site-functions/_pipeopsctl \
		fish:/usr/share/fish/vendor_completions.d/pipeopsctl.fish; do
		shell=${spec%%:*}
		file=$ROOT${spec#*:}
		[ -d "${file%/*}" ] || continue
		if [ "$DRY_RUN" = 1 ]; then
			printf '+ %s completion %s > %s\n' "$BIN_DIR/pipeopsctl" "$shell" "$file"
			continue
		fi
		if ! "$BIN_DIR/pipeopsctl" completion "$shell" >"$file.new" </dev/null; then
			rm -f "$file.new"
			info "could not write the $shell completion to $file (skipped)"
		elif cmp -s "$file.new" "$file"; then
			rm -f "$file.new"
		else
			mv -f "$file.new" "$file" && info "installed $file"
		fi
	done
}

hand_over() {
	set -- install
	[ -n "$TOKEN_SRC" ] && set -- "$@" --token-file "$TOKEN_SRC"
	[ -n "${PIPEOPS_API_URL:-}" ] && set -- "$@" --api-url "$PIPEOPS_API_URL"
	[ -n "${PIPEOPS_CLUSTER_NAME:-}" ] && set -- "$@" --cluster-name "$PIPEOPS_CLUSTER_NAME"
	[ "$BIN_DIR" != /usr/bin ] && set -- "$@" --bin-dir "$BIN_DIR"
	if [ "$BIN_CHANGED" = true ] || is_true "${PIPEOPS_FORCE_RESTART:-}"; then set -- "$@" --restart; fi
	is_true "${PIPEOPS_SKIP_START:-}" && set -- "$@" --no-start
	[ -n "$ROOT" ] && set -- "$@" --root "$ROOT"
	if [ "$TOKEN_SRC" = - ]; then
		if [ "$DRY_RUN" = 1 ]; then
			printf '+ %s %s (the token on stdin)\n' "$BIN_DIR/pipeopsctl" "$*"
			return 0
		fi
		# printf is a builtin: the token never shows in ps, and no file holds it.
		printf '%s\n' "$TOKEN" | "$BIN_DIR/pipeopsctl" "$@"
		TOKEN=
		return 0
	fi
	# stdin is /dev/null: pipeopsctl must not read this script as a token.
	do_cmd "$BIN_DIR/pipeopsctl" "$@" </dev/null
}

finish() {
	[ "$DRY_RUN" = 1 ] && return 0
	info "$("$BIN_DIR/pipeops-agent" version 2>/dev/null || echo "pipeops-agent version unknown")"
	if [ -z "$ROOT" ]; then
		info "service: $(systemctl is-active pipeops-agent.service 2>/dev/null || true)"
	fi
	info "check it with: pipeopsctl status    follow its logs: pipeopsctl logs -f"
	info "remove it with: $BIN_DIR/pipeops-uninstall.sh"
}

cleanup() {
	[ -n "${TMP_DIR:-}" ] && rm -rf "$TMP_DIR"
	return 0
}

main() {
	set -eu
	setup_env
	check_base_url
	need_root "$@"
	detect_platform
	detect_tools
	TMP_DIR=$(mktemp -d)
	TOKEN=
	trap cleanup EXIT
	trap 'exit 130' INT TERM
	get_token
	fetch_binaries
	install_binaries
	install_completions
	hand_over
	finish
}

[ "${PIPEOPS_INSTALL_SOURCED:-}" = 1 ] || main "$@"
