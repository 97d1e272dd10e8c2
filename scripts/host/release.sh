#!/usr/bin/env bash
# scripts/host/release.sh OUT [VERSION] - build a goreleaser snapshot (both
# binaries, linux amd64+arm64, tar.gz, deb, rpm, checksums.txt) offline and
# copy the artifacts to OUT. VERSION (default 0.0.1-next) becomes the
# binaries' and packages' version, so the host tier can build an "old" and a
# "new" release for the upgrade test.
#
# PIPEOPS_RELEASE_FROM=head builds a clean clone of HEAD instead of the
# working tree (useful while a shared tree holds someone's half-done work).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${1:?usage: release.sh OUT [VERSION]}
VERSION=${2:-}
TOOLS=$("$ROOT/scripts/host/tools.sh" go)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

src=$ROOT
if [ "${PIPEOPS_RELEASE_FROM:-worktree}" = head ]; then
  src=$(mktemp -d /tmp/pipeops-release-src.XXXXXX)
  trap 'rm -rf "$src"' EXIT
  git clone -q --local --no-hardlinks "$ROOT" "$src"
fi
cd "$src"
"$TOOLS/goreleaser" check >/dev/null 2>&1 || { "$TOOLS/goreleaser" check; exit 1; }
log=$(mktemp)
if ! PIPEOPS_SNAPSHOT_VERSION=$VERSION "$TOOLS/goreleaser" release --snapshot --clean >"$log" 2>&1; then
  tail -n 40 "$log" >&2
  echo "goreleaser release --snapshot failed (full log: $log)" >&2
  exit 1
fi
rm -f "$log"
cp dist/*.tar.gz dist/*.deb dist/*.rpm dist/checksums.txt "$OUT/"
ls "$OUT"
