#!/usr/bin/env bash
# scripts/test.sh - what `make test` and .ci/run do:
#   1. install the host tools the tests need (apt, Go module proxy; cached)
#   2. build the Kubernetes test binaries (cached under ~/.cache/pipeops-test)
#   3. start one real test cluster for the whole run and export its kubeconfig
#   4. go test -race ./... ; under CI=true any skipped test fails the run;
#      then the short modes of the fault and HA failover benches (scripts/bench)
#   5. the host tier (packages, installer and unit under a real systemd)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
t0=$SECONDS
ARTIFACTS=${PIPEOPS_TEST_ARTIFACTS:-$ROOT/tests/artifacts}
mkdir -p "$ARTIFACTS"

log() { printf '==> %s (%ss)\n' "$*" "$((SECONDS - t0))"; }

log "host tools"
scripts/setup-tools.sh

log "Kubernetes test binaries"
PIPEOPS_TEST_K8S_BIN=$(scripts/k8s/build.sh)
export PIPEOPS_TEST_K8S_BIN

if [ -x scripts/k8s/cluster.sh ]; then
  log "starting the test cluster"
  CLUSTER_DIR=$(mktemp -d /tmp/pipeops-cluster.XXXXXX)
  trap 'scripts/k8s/cluster.sh stop "$CLUSTER_DIR" || true' EXIT
  FULL=1 scripts/k8s/cluster.sh start "$CLUSTER_DIR"
  export PIPEOPS_TEST_KUBECONFIG=$CLUSTER_DIR/admin.kubeconfig
fi

log "go test -race ./..."
set +e
go test -race -count=1 -timeout 40m -json ./... > "$ARTIFACTS/go-test.json"
rc=$?
set -e
go run ./scripts/testreport < "$ARTIFACTS/go-test.json" || rc=1
[ "$rc" -eq 0 ] || { echo "go test failed" >&2; exit "$rc"; }

log "fault bench, short mode: counts asserted (hangs, panics, restarts, corrupt state, leaks), timings printed"
# About a minute. It stops and restarts the test cluster's API server (F3),
# so it runs after go test, never beside it.
go run ./scripts/bench faults -short ${CLUSTER_DIR:+-cluster "$CLUSTER_DIR"} | tee "$ARTIFACTS/faults-short.txt"

log "HA failover bench, short mode: two links at once, registrations and the wire asserted, timings printed"
# About 40 s: 2 kills and 2 graceful stops of the leader among three agents (3 s lease).
go run ./scripts/bench failover -short ${CLUSTER_DIR:+-cluster "$CLUSTER_DIR"} | tee "$ARTIFACTS/failover-short.txt"

log "fuzzing the decoders and validators briefly (corpus in testdata/fuzz)"
# Counts, not durations: a -fuzztime duration races Go's fuzz coordinator
# and fails with a bare "context deadline exceeded" and no crasher
# (go.dev/issue/75804, fixed in Go 1.27). Each is about 10 s here.
go test -run='^$' -fuzz=FuzzDecode -fuzztime=800000x -timeout=5m ./internal/protocol
go test -run='^$' -fuzz=FuzzReadHeader -fuzztime=50000x -timeout=5m ./internal/tunnel
# Where control-plane and cluster input arrives (issue 13): proxy_request
# validation, relay frames, backend WebSocket messages, Ingress routes, config.
go test -run='^$' -fuzz=FuzzProxyRequest -fuzztime=30000x -timeout=5m ./internal/kubeproxy
go test -run='^$' -fuzz=FuzzParseFrame -fuzztime=150000x -timeout=5m ./internal/kubeproxy
go test -run='^$' -fuzz=FuzzReadBackendMessage -fuzztime=10000x -timeout=5m ./internal/kubeproxy
go test -run='^$' -fuzz=FuzzExtractRoutes -fuzztime=200000x -timeout=5m ./internal/routesync
go test -run='^$' -fuzz=FuzzLoad -fuzztime=15000x -timeout=5m ./internal/config

log "make demo, checked: kubectl through devplane → agent → kube-apiserver"
DEMO_DIR=$(mktemp -d /tmp/pipeops-demo.XXXXXX) scripts/demo.sh --check

if [ -x scripts/host-test.sh ]; then
  log "host tier"
  scripts/host-test.sh
fi
log "all tests passed"
