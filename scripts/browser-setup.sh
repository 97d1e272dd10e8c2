#!/usr/bin/env bash
# scripts/browser-setup.sh - install headless Chromium and chromedriver from
# Debian's packages for the dashboard's browser test (tests/browser).
# Idempotent and quick when both are present. scripts/setup-tools.sh calls it.
set -euo pipefail
have() { command -v "$1" >/dev/null 2>&1; }
if have chromedriver && { have chromium || have chromium-browser; }; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "missing chromium/chromedriver; install them with: sudo apt-get install -y chromium chromium-driver" >&2
  exit 1
fi
echo "installing chromium and chromium-driver from Debian's packages" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null
