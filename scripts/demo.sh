#!/usr/bin/env bash
# scripts/demo.sh - `make demo`: build everything, start a real local
# Kubernetes control plane, the reference control plane (pipeops-devplane) and
# the agent, then print how to reach the cluster *through* the agent:
# kubectl get, exec, logs -f and port-forward to a pod on the cluster's node
# (kwok serves its kubelet API: exec runs a real shell, logs is a file the
# demo appends to, port-forward reaches a small web server on this host).
#
#   make demo                  # runs in the foreground; Ctrl-C stops everything
#   scripts/demo.sh --check    # same, but runs each command through the agent and exits
#
# Everything listens on 127.0.0.1 on free ports; state lives in $DEMO_DIR
# (default /tmp/pipeops-demo). The first run builds Kubernetes from the Go
# module proxy (about 6 minutes on 2 cores); later runs take seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
CHECK=0
[ "${1:-}" = --check ] && CHECK=1
DEMO_DIR=${DEMO_DIR:-/tmp/pipeops-demo}
# The demo outlives its terminal or pipe (make demo | tee log, a closed
# window): SIGPIPE is ignored and say drops what it cannot write, so a
# vanished reader can neither kill the script nor skip its clean-up.
trap '' PIPE
exec 3>&2
say() { printf '\033[1m==> %s\033[0m\n' "$*" >&3 2>/dev/null || true; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

say "building pipeops-agent, pipeopsctl, pipeops-agent-helm and pipeops-devplane into bin/"
make -s build
scripts/setup-tools.sh core
say "building (or reusing) the Kubernetes binaries"
K8S_BIN=$(scripts/k8s/build.sh)

rm -rf "$DEMO_DIR" && mkdir -p "$DEMO_DIR"
pids=()
# cleanup stops everything before it prints anything: when the terminal or
# the pipe on our output is gone, a write would end the shell with SIGPIPE
# and leave kube-apiserver and kube-controller-manager running.
cleanup() {
  trap '' PIPE INT TERM
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  scripts/k8s/cluster.sh stop "$DEMO_DIR/cluster" >/dev/null 2>&1 || true
  say "stopped the agent, pipeops-devplane and the cluster"
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

# The node's side (scripts/k8s/cluster.sh): exec runs in NODE_EXEC_DIR, every
# pod's log is NODE_LOG_FILE, and port-forward reaches PORTFORWARD_PORT.
# shellcheck disable=SC1091
. "$DEMO_DIR/cluster/cluster.env"
ADMIN="$K8S_BIN/kubectl --kubeconfig $DEMO_DIR/cluster/admin.kubeconfig"
say "starting pod demo on the cluster's node, a web server behind its port 80, and a log line every 2 s"
$ADMIN apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: demo, namespace: default}
spec:
  nodeName: kwok-node-0
  containers: [{name: web, image: demo.invalid/web}]
YAML
mkdir -p "$DEMO_DIR/www"
echo "hello from the demo pod's port 80 (a web server on this host, reached through the agent)" > "$DEMO_DIR/www/index.html"
python3 -m http.server "$PORTFORWARD_PORT" --bind 127.0.0.1 --directory "$DEMO_DIR/www" >"$DEMO_DIR/web.log" 2>&1 &
pids+=($!)
( trap '' PIPE; n=0
  while :; do
    n=$((n + 1))
    echo "$(date -u +%Y-%m-%dT%H:%M:%S.%NZ) stdout F demo log line $n" >> "$NODE_LOG_FILE"
    sleep 2
  done ) &
pids+=($!)
$ADMIN wait --for=condition=Ready pod/demo --timeout=60s >/dev/null

KUBECTL="$K8S_BIN/kubectl --kubeconfig $DEMO_DIR/through-agent.kubeconfig"
if [ "$CHECK" = 1 ]; then
  say "kubectl through devplane → agent → kube-apiserver"
  $KUBECTL get namespaces
  $KUBECTL create configmap demo-check --from-literal=hello=world -n default >/dev/null
  $KUBECTL get configmap demo-check -n default -o jsonpath='{.data.hello}'; echo

  say "kubectl exec through the agent: a real shell on the node"
  out=$($KUBECTL exec demo -- sh -c 'pwd; echo exec works')
  echo "$out"
  [ "$out" = "$NODE_EXEC_DIR"$'\n'"exec works" ] || { echo "kubectl exec printed the wrong thing" >&2; exit 1; }

  say "kubectl logs -f through the agent: a line written after it started"
  $KUBECTL logs -f --tail=1 demo > "$DEMO_DIR/logs-f.out" 2>&1 &
  logs=$!
  first=$(tail -1 "$NODE_LOG_FILE" | sed 's/.* F //')
  for _ in $(seq 1 100); do
    last=$(tail -1 "$DEMO_DIR/logs-f.out" 2>/dev/null || true)
    [ -n "$last" ] && [ "$last" != "$first" ] && break
    sleep 0.1
  done
  kill "$logs" 2>/dev/null || true; wait "$logs" 2>/dev/null || true
  cat "$DEMO_DIR/logs-f.out"
  if [ -z "$last" ] || [ "$last" = "$first" ]; then echo "kubectl logs -f showed no new line within 10 s" >&2; exit 1; fi

  say "kubectl port-forward through the agent: the pod's port 80"
  LOCAL_PORT=$(free_port)
  $KUBECTL port-forward demo "$LOCAL_PORT:80" > "$DEMO_DIR/port-forward.out" 2>&1 &
  pf=$!
  page=""
  for _ in $(seq 1 100); do
    page=$(curl -sf "http://127.0.0.1:$LOCAL_PORT/" 2>/dev/null) && break
    sleep 0.1
  done
  kill "$pf" 2>/dev/null || true; wait "$pf" 2>/dev/null || true
  echo "$page"
  case $page in *"hello from the demo pod"*) ;; *) echo "kubectl port-forward did not reach the pod's web server" >&2; cat "$DEMO_DIR/port-forward.out" >&2; exit 1 ;; esac

  bin/pipeopsctl --socket "$DEMO_DIR/agent.sock" status
  say "demo check passed"
  exit 0
fi

cat <<MSG || true

  The cluster is reachable through the agent. Paste:

    $KUBECTL get nodes,pods -A
    $KUBECTL exec demo -- sh -c 'pwd; ls'          # a real shell on the node (in $NODE_EXEC_DIR)
    $KUBECTL exec -it demo -- sh                    # interactive, with a terminal
    $KUBECTL logs -f demo                            # a new line every 2 s; Ctrl-C ends it
    $KUBECTL port-forward demo 8080:80              # then: curl http://127.0.0.1:8080/

  Also try:
    bin/pipeopsctl --socket $DEMO_DIR/agent.sock status     # what the agent is doing
    open http://127.0.0.1:$AGENT_PORT/                        # live dashboard
    curl -s http://127.0.0.1:$DP_PORT/admin/clusters          # the control plane's view
    tail -f $DEMO_DIR/agent.log

  Ctrl-C stops the agent, pipeops-devplane and the cluster.

MSG
wait "${pids[0]}"
