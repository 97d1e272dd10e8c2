#!/usr/bin/env bash
# scripts/lint.sh - formatting, vet and shell checks.
set -euo pipefail
cd "$(dirname "$0")/.."
bad=$(git ls-files -z '*.go' | xargs -0 gofmt -l)
if [ -n "$bad" ]; then echo "gofmt would change: $bad" >&2; exit 1; fi
go vet ./...
if command -v shellcheck >/dev/null; then
  shellcheck -x scripts/*.sh scripts/*/*.sh .ci/run
  [ -f installer/install.sh ] && shellcheck -s sh installer/install.sh
fi
echo "lint OK"
