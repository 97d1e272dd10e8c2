#!/usr/bin/env bash
# scripts/setup-tools.sh - install the host tools the tests and the demo use,
# from Debian's packages. Idempotent and quick when everything is present.
#   core:    openssl (test-cluster PKI), curl, python3 (free ports), shellcheck
#   shells:  zsh and fish (pipeopsctl's completion scripts are run in tests)
#   browser: chromium + chromedriver for the dashboard test (scripts/browser-setup.sh)
#   host:    bats, lintian, rpm, debootstrap, systemd-container … (scripts/host/tools.sh apt)
# Usage: scripts/setup-tools.sh [core]   (core only: what `make demo` needs)
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
have() { command -v "$1" >/dev/null 2>&1; }
have openssl || need+=(openssl)
have curl || need+=(curl)
have python3 || need+=(python3)
have shellcheck || need+=(shellcheck)
have systemd-analyze || need+=(systemd)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing tools: ${need[*]}; install them with: sudo apt-get install -y ${need[*]}" >&2
    exit 1
  fi
  echo "installing ${need[*]} from Debian's packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
[ "${1:-}" = core ] && exit 0
need=()
have zsh || need+=(zsh)
have fish || need+=(fish)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing tools: ${need[*]}; install them with: sudo apt-get install -y ${need[*]}" >&2
    exit 1
  fi
  echo "installing ${need[*]} from Debian's packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
scripts/browser-setup.sh
scripts/host/tools.sh apt
