#!/usr/bin/env bash
# scripts/host/tools.sh - install what the host tier needs and print the
# directory holding goreleaser and nfpm.
#   apt (Debian's mirror): shellcheck bats lintian rpm debootstrap
#     systemd-container dash python3 (skipped when already present)
#   Go module proxy: goreleaser v2.15.1 and nfpm v2.45.2, built into
#     ~/.cache/pipeops-test/tools (never into the repo's go.mod). goreleaser
#     takes about 5 min and 2 cores the first time; later runs are instant.
# Usage: scripts/host/tools.sh [apt|go|all]   (default all)
set -euo pipefail
what=${1:-all}
CACHE=${PIPEOPS_TEST_CACHE:-$HOME/.cache/pipeops-test}
TOOLS=$CACHE/tools
GORELEASER_VERSION=v2.15.1
NFPM_VERSION=v2.45.2

have() { command -v "$1" >/dev/null 2>&1; }

apt_tools() {
  local need=()
  have shellcheck || need+=(shellcheck)
  have bats || need+=(bats)
  have lintian || need+=(lintian)
  have rpm || need+=(rpm)
  have debootstrap || need+=(debootstrap)
  have systemd-nspawn || need+=(systemd-container)
  have dash || need+=(dash)
  have python3 || need+=(python3)
  have systemd-analyze || need+=(systemd)
  [ ${#need[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "missing host tools: ${need[*]}; install them with: sudo apt-get install -y ${need[*]}" >&2
    exit 1
  fi
  echo "installing ${need[*]} from Debian's packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${need[@]}" >/dev/null
}

go_tools() {
  mkdir -p "$TOOLS"
  # The stamp files record the version so a bump rebuilds.
  if [ ! -x "$TOOLS/nfpm" ] || [ "$(cat "$TOOLS/nfpm.version" 2>/dev/null)" != "$NFPM_VERSION" ]; then
    echo "building nfpm $NFPM_VERSION into $TOOLS" >&2
    (cd "$TOOLS" && GOBIN=$TOOLS GOFLAGS=-mod=mod go install "github.com/goreleaser/nfpm/v2/cmd/nfpm@$NFPM_VERSION")
    echo "$NFPM_VERSION" > "$TOOLS/nfpm.version"
  fi
  if [ ! -x "$TOOLS/goreleaser" ] || [ "$(cat "$TOOLS/goreleaser.version" 2>/dev/null)" != "$GORELEASER_VERSION" ]; then
    echo "building goreleaser $GORELEASER_VERSION into $TOOLS (about 5 min the first time)" >&2
    (cd "$TOOLS" && GOBIN=$TOOLS GOFLAGS=-mod=mod go install "github.com/goreleaser/goreleaser/v2@$GORELEASER_VERSION")
    echo "$GORELEASER_VERSION" > "$TOOLS/goreleaser.version"
  fi
}

case $what in
  apt) apt_tools ;;
  go) go_tools ;;
  all) apt_tools; go_tools ;;
  *) echo "usage: $0 [apt|go|all]" >&2; exit 2 ;;
esac
echo "$TOOLS"
