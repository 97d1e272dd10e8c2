#!/usr/bin/env bash
# scripts/host-test.sh - the host tier: the unit, the installer and the
# packages, then all of it under a real systemd. scripts/test.sh runs it.
#
#   fast tier:    shellcheck + dash -n, bats (install.sh against a local HTTP
#                 server), systemd-analyze verify/security (go test ./systemd),
#                 goreleaser check + two offline snapshots, dpkg-deb -c / rpm -qp
#                 golden listings, conffile flags, lintian without errors
#   systemd tier: Debian 12 (debootstrap, cached) booted by systemd-nspawn:
#                 scripts/host/nspawn.sh
#
# Under CI=true nothing is skipped: a missing prerequisite (root, nspawn,
# debootstrap) fails the run. UPDATE=1 rewrites packaging/testdata/*.golden.
# PIPEOPS_RELEASE_FROM=head builds the snapshots from a clean clone of HEAD.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ART=${PIPEOPS_TEST_ARTIFACTS:-$ROOT/tests/artifacts}/host
rm -rf "$ART" && mkdir -p "$ART"
t0=$SECONDS
phase_start=$SECONDS
timings=()

phase() {
  if [ -n "${PHASE:-}" ]; then timings+=("$(printf '%-34s %4ss' "$PHASE" "$((SECONDS - phase_start))")"); fi
  PHASE=$1
  phase_start=$SECONDS
  printf '==> host: %s (%ss)\n' "$1" "$((SECONDS - t0))"
}
missing() { # the tier cannot run: fail under CI, say so loudly elsewhere
  if [ "${CI:-}" = true ]; then
    echo "FAIL: $* (CI=true: the host tier never skips)" >&2
    exit 1
  fi
  echo "!!! SKIPPING: $* (this would fail under CI=true)" >&2
}
report() {
  phase end
  echo "host tier timings:"
  printf '  %s\n' "${timings[@]}"
  printf '  %-34s %4ss\n' total "$((SECONDS - t0))"
}
trap report EXIT

phase "tools (apt + goreleaser/nfpm)"
if [ "$(id -u)" != 0 ]; then
  missing "the host tier needs root (apt, dpkg, systemd-nspawn)"
  exit 0
fi
scripts/host/tools.sh all >/dev/null
# debootstrap is network- and disk-bound: build the tree while the CPU-bound
# fast tier runs (a no-op once cached).
ROOTFS_LOG=$ART/rootfs.log
ROOTFS_PID=''
if command -v debootstrap >/dev/null; then
  scripts/host/rootfs.sh >"$ROOTFS_LOG" 2>&1 &
  ROOTFS_PID=$!
fi

phase "fast: shellcheck"
shellcheck -s sh installer/install.sh installer/uninstall.sh packaging/scripts/*.sh
shellcheck scripts/host-test.sh scripts/host/*.sh
for f in installer/install.sh installer/uninstall.sh packaging/scripts/*.sh; do dash -n "$f"; done

phase "fast: bats"
bats installer/test

phase "fast: systemd-analyze verify + security"
out=$(CI=true go test -count=1 -v ./systemd 2>&1) || { echo "$out"; exit 1; }
grep -E 'exposure|^ok' <<<"$out"

phase "fast: goreleaser snapshots"
scripts/host/release.sh "$ART/old" 0.0.1 >/dev/null
scripts/host/release.sh "$ART/new" 0.0.2 >/dev/null
ls "$ART/new"

phase "fast: package contents"
golden() { # golden NAME < content
  local want=packaging/testdata/$1.golden got
  got=$(cat)
  if [ "${UPDATE:-}" = 1 ]; then printf '%s\n' "$got" >"$want"; fi
  if ! diff -u "$want" <(printf '%s\n' "$got"); then
    echo "FAIL: $1 differs from $want (rerun with UPDATE=1 if intended)" >&2
    exit 1
  fi
}
mkdir -p packaging/testdata
for arch in amd64 arm64; do
  deb=$(ls "$ART"/new/pipeops-agent_*_"$arch".deb)
  {
    dpkg-deb -c "$deb" | awk '{print $1, $2, $6}'
    echo "conffiles:"
    dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles
    echo "maintainer scripts:"
    dpkg-deb --ctrl-tarfile "$deb" | tar -t | grep -E 'inst$|rm$' | sort
  } | golden deb-contents
  rpmf=$(ls "$ART"/new/pipeops-agent-*."$( [ "$arch" = amd64 ] && echo x86_64 || echo aarch64)".rpm)
  {
    rpm -qp --qf '[%{FILEMODES:perms} %{FILEUSERNAME}/%{FILEGROUPNAME} %-3{FILEFLAGS:fflags} %{FILENAMES}\n]' "$rpmf" 2>/dev/null
    echo "scriptlets:"
    rpm -qp --scripts "$rpmf" 2>/dev/null | grep -oE '^[a-z]+ scriptlet' | sort
  } | golden rpm-contents
done
lintian_out=$(lintian "$(ls "$ART"/new/pipeops-agent_*_amd64.deb)" 2>&1 | grep -v 'running with root privileges' || true)
echo "${lintian_out:-lintian: clean}"
if grep -q '^E:' <<<"$lintian_out"; then
  echo "FAIL: lintian reports errors" >&2
  exit 1
fi

phase "systemd tier: debootstrap (cached)"
if ! command -v systemd-nspawn >/dev/null || ! command -v debootstrap >/dev/null; then
  missing "systemd-nspawn or debootstrap is not installed"
  exit 0
fi
if [ -n "$ROOTFS_PID" ] && ! wait "$ROOTFS_PID"; then
  cat "$ROOTFS_LOG" >&2
  echo "FAIL: building the Debian tree failed" >&2
  exit 1
fi
ROOTFS=$(tail -n 1 "$ROOTFS_LOG")

phase "systemd tier: nspawn"
scripts/host/nspawn.sh "$ROOTFS" "$ART/old" "$ART/new"
phase "host tier passed"
