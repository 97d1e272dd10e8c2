#!/usr/bin/env bash
# scripts/k8s/build.sh - build a real Kubernetes control plane (and the test
# tools around it) from the Go module proxy, into a cache outside the repo.
#
#   scripts/k8s/build.sh            # etcd, kube-apiserver, kubectl, kcm, scheduler, kwok, helm
#   CORE=1 scripts/k8s/build.sh     # only etcd, kube-apiserver, kubectl (enough for envtest)
#   scripts/k8s/build.sh --print-bin  # print the cache folder and exit
#
# Binaries land in $PIPEOPS_TEST_CACHE/<k8s version>/bin (default
# ~/.cache/pipeops-test/v1.36.3/bin). A binary that is already there is kept,
# so a warm run takes a second or two.
#
# Why a wrapper module: k8s.io/kubernetes and etcd/server/v3 cannot be
# `go install`ed because their go.mod files carry replace directives. The
# go.mod beside this script requires k8s.io/kubernetes and repeats its
# ./staging replaces with the published k8s.io/* v0.<minor> modules; the
# binaries are `tool` directives. Always pin @version when changing tools:
# `go get -tool pkg` without one silently moves k8s.io/kubernetes to latest.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE"

K8S=$(sed -n 's/^require k8s.io\/kubernetes \(v.*\)$/\1/p' go.mod)
KWOK=${KWOK:-v0.8.0}          # built on k8s.io v0.36
HELM_VER=${HELM_VER:-v3.22.0}
CACHE=${PIPEOPS_TEST_CACHE:-$HOME/.cache/pipeops-test}
BIN=$CACHE/$K8S/bin
if [ "${1:-}" = --print-bin ]; then echo "$BIN"; exit 0; fi
mkdir -p "$BIN"
export GOFLAGS=${GOFLAGS:-} GOWORK=off

# Same version stamps as the official release build; unstamped binaries report
# v0.0.0-master, which breaks charts with a kubeVersion constraint.
minor=$(echo "$K8S" | cut -d. -f2)
ldflags="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags="$ldflags -X $p.gitVersion=$K8S -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
done

total0=$SECONDS
built=0
step() { # name command...
  local name=$1 t0=$SECONDS; shift
  if [ -x "$BIN/$name" ]; then return 0; fi
  echo "building $name (cold builds take minutes; see docs/kubernetes.md)..." >&2
  "$@"
  built=1
  echo "built $name in $((SECONDS - t0))s ($(du -m "$BIN/$name" | cut -f1) MiB)" >&2
}
gobuild() { go build -trimpath -ldflags "$ldflags" -o "$BIN/$1" "$2"; }

step etcd gobuild etcd go.etcd.io/etcd/server/v3
step kube-apiserver gobuild kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
step kubectl gobuild kubectl k8s.io/kubernetes/cmd/kubectl
if [ "${CORE:-0}" != 1 ]; then
  step kube-controller-manager gobuild kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager
  step kube-scheduler gobuild kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler
  # kwok and helm have no replace directives: plain go install works.
  step kwok env GOBIN="$BIN" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK"
  kwok_src() { # the kwok module's folder (downloaded when the bin cache outlived the module cache)
    go mod download -json "sigs.k8s.io/kwok@$KWOK" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'
  }
  if [ ! -s "$BIN/kwok-stages.yaml" ]; then
    # The kwok binary has no built-in stages; use the ones kwokctl uses.
    src=$(kwok_src)/kustomize/stage
    for f in node/fast/node-initialize.yaml node/heartbeat/node-heartbeat.yaml \
             pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
      echo "---"; cat "$src/$f"
    done > "$BIN/kwok-stages.yaml.tmp" && mv "$BIN/kwok-stages.yaml.tmp" "$BIN/kwok-stages.yaml"
  fi
  if [ ! -s "$BIN/kwok-crds.yaml" ]; then
    # The per-pod simulation resources of kwok's kubelet API (cluster.sh
    # enables them with --enable-crds): tests point one pod's exec, logs,
    # attach or port-forward at their own directory, file or server.
    src=$(kwok_src)/kustomize/crd/bases
    for r in execs logs attaches portforwards; do
      echo "---"; sed '/^---$/d' "$src/kwok.x-k8s.io_$r.yaml"
    done > "$BIN/kwok-crds.yaml.tmp" && mv "$BIN/kwok-crds.yaml.tmp" "$BIN/kwok-crds.yaml"
  fi
  step helm env GOBIN="$BIN" go install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VER" "helm.sh/helm/v3/cmd/helm@$HELM_VER"
fi
if [ "$built" = 1 ]; then
  echo "k8s test binaries: cold build took $((SECONDS - total0))s into $BIN" >&2
else
  echo "k8s test binaries: warm ($((SECONDS - total0))s) in $BIN" >&2
fi
echo "$BIN"
