#!/usr/bin/env bash
# scripts/demo.sh - `make demo`: build everything, start a real local
# Kubernetes control plane, the reference control plane (pipeops-devplane) and
# the agent, then print how to reach the cluster *through* the agent.
#
#   make demo                  # runs in the foreground; Ctrl-C stops everything
#   scripts/demo.sh --check    # same, but runs kubectl through the agent and exits
#
# Everything listens on 127.0.0.1 on free ports; state lives in $DEMO_DIR
# (default /tmp/pipeops-demo). The first run builds Kubernetes from the Go
# module proxy (about 6 minutes on 2 cores); later runs take seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
CHECK=0
[ "${1:-}" = --check ] && CHECK=1
DEMO_DIR=${DEMO_DIR:-/tmp/pipeops-demo}
say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

say "building pipeops-agent, pipeopsctl, pipeops-agent-helm and pipeops-devplane into bin/"
make -s build
scripts/setup-tools.sh core
say "building (or reusing) the Kubernetes binaries"
K8S_BIN=$(scripts/k8s/build.sh)

rm -rf "$DEMO_DIR" && mkdir -p "$DEMO_DIR"
pids=()
cleanup() {
  say "stopping"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  scripts/k8s/cluster.sh stop "$DEMO_DIR/cluster" >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 0' INT TERM  # Ctrl-C is how the demo ends: not an error

say "starting a Kubernetes control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok)"
FULL=1 scripts/k8s/cluster.sh start "$DEMO_DIR/cluster" >"$DEMO_DIR/cluster.log" 2>&1 || { cat "$DEMO_DIR/cluster.log" >&2; exit 1; }

DP_PORT=$(free_port)
AGENT_PORT=$(free_port)
head -c 24 /dev/urandom | base64 | tr -d '/+=' > "$DEMO_DIR/token"
chmod 600 "$DEMO_DIR/token"

say "starting pipeops-devplane on 127.0.0.1:$DP_PORT"
bin/pipeops-devplane --listen "127.0.0.1:$DP_PORT" --token-file "$DEMO_DIR/token" \
  --kubeconfig-out "$DEMO_DIR/through-agent.kubeconfig" >"$DEMO_DIR/devplane.log" 2>&1 &
pids+=($!)

cat > "$DEMO_DIR/agent.yaml" <<YAML
version: 1
agent:
  name: demo-cluster
  port: $AGENT_PORT
  state_dir: $DEMO_DIR/state
  socket: $DEMO_DIR/agent.sock
pipeops:
  api_url: http://127.0.0.1:$DP_PORT
  token_file: $DEMO_DIR/token
kubernetes:
  kubeconfig: $DEMO_DIR/cluster/admin.kubeconfig
logging:
  format: text
tunnel:
  forwards:
    - name: agent-http
      local_addr: 127.0.0.1:$AGENT_PORT
YAML

say "starting pipeops-agent (dashboard on http://127.0.0.1:$AGENT_PORT/)"
bin/pipeops-agent run --config "$DEMO_DIR/agent.yaml" >"$DEMO_DIR/agent.log" 2>&1 &
pids+=($!)

say "waiting for the agent to register and heartbeat"
for _ in $(seq 1 120); do
  if [ -s "$DEMO_DIR/through-agent.kubeconfig" ] && curl -sf "http://127.0.0.1:$AGENT_PORT/ready" >/dev/null 2>&1; then break; fi
  sleep 0.5
done
if ! curl -sf "http://127.0.0.1:$AGENT_PORT/ready" >/dev/null 2>&1; then
  echo "the agent did not become ready; last lines of its log:" >&2
  tail -20 "$DEMO_DIR/agent.log" >&2
  curl -s "http://127.0.0.1:$AGENT_PORT/ready" >&2 || true
  exit 1
fi

KUBECTL="$K8S_BIN/kubectl --kubeconfig $DEMO_DIR/through-agent.kubeconfig"
if [ "$CHECK" = 1 ]; then
  say "kubectl through devplane → agent → kube-apiserver"
  $KUBECTL get namespaces
  $KUBECTL create configmap demo-check --from-literal=hello=world -n default >/dev/null
  $KUBECTL get configmap demo-check -n default -o jsonpath='{.data.hello}'; echo
  bin/pipeopsctl --socket "$DEMO_DIR/agent.sock" status
  say "demo check passed"
  exit 0
fi

cat <<MSG

  The cluster is reachable through the agent. Paste:

    $KUBECTL get nodes,pods -A

  Also try:
    bin/pipeopsctl --socket $DEMO_DIR/agent.sock status     # what the agent is doing
    open http://127.0.0.1:$AGENT_PORT/                        # live dashboard
    curl -s http://127.0.0.1:$DP_PORT/admin/clusters          # the control plane's view
    tail -f $DEMO_DIR/agent.log

  Ctrl-C stops the agent, pipeops-devplane and the cluster.

MSG
wait "${pids[0]}"
