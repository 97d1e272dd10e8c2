#!/usr/bin/env bash
# scripts/host/rootfs.sh - build (once) and print the Debian 12 tree the
# systemd tier boots with systemd-nspawn. Cached outside the repo under
# ~/.cache/pipeops-test/rootfs/; about 2 min and 250 MB the first time.
# The mirror is the host's own (from /etc/apt/sources.list*), because CI
# reaches only Debian's mirror.
set -euo pipefail
CACHE=${PIPEOPS_TEST_CACHE:-$HOME/.cache/pipeops-test}
SUITE=bookworm
# Bump REV when the package list changes, so the cache rebuilds.
REV=3
# man-db and bash-completion: the tier checks "man pipeopsctl" and completion.
INCLUDE=systemd,systemd-sysv,dbus,ca-certificates,curl,rpm,man-db,bash-completion
DIR=$CACHE/rootfs/$SUITE-r$REV

mirror() {
  local m
  m=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
    grep -v -- '-security' | grep -oE 'https?://[^ ]+' | head -n1 || true)
  echo "${PIPEOPS_DEBIAN_MIRROR:-${m:-http://deb.debian.org/debian}}"
}

if [ ! -f "$DIR/.complete" ]; then
  command -v debootstrap >/dev/null || { echo "debootstrap is missing: run scripts/host/tools.sh apt" >&2; exit 1; }
  [ "$(id -u)" = 0 ] || { echo "debootstrap needs root" >&2; exit 1; }
  m=$(mirror)
  echo "building the $SUITE tree in $DIR from $m (about 2 min)" >&2
  rm -rf "$DIR.tmp"
  mkdir -p "$(dirname "$DIR")"
  debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$DIR.tmp" "$m" >"$DIR.log" 2>&1 ||
    { tail -n 30 "$DIR.log" >&2; echo "debootstrap failed; full log in $DIR.log" >&2; exit 1; }
  # A booted container needs no getty on the console and no machine-id clash.
  rm -f "$DIR.tmp/etc/machine-id" && : > "$DIR.tmp/etc/machine-id"
  touch "$DIR.tmp/.complete"
  rm -rf "$DIR"
  mv "$DIR.tmp" "$DIR"
fi
echo "$DIR"
