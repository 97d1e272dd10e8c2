#!/usr/bin/env bash
# scripts/k8s/cluster.sh - run a real Kubernetes control plane on 127.0.0.1
# from the binaries that scripts/k8s/build.sh made.
#
#   scripts/k8s/cluster.sh start DIR          # etcd + kube-apiserver
#   FULL=1 scripts/k8s/cluster.sh start DIR   # + kube-controller-manager, kube-scheduler,
#                                             #   kwok and one fake Ready node (kwok-node-0)
#                                             #   whose kubelet API kwok serves (see below)
#   scripts/k8s/cluster.sh stop DIR           # clients, then apiserver, then etcd
#   scripts/k8s/cluster.sh apiserver-stop DIR # stop only kube-apiserver (outage tests)
#   scripts/k8s/cluster.sh apiserver-start DIR # start it again on the same port
#
# Afterwards: export KUBECONFIG=DIR/admin.kubeconfig
#
# Every listener is on 127.0.0.1 and on ports picked free at start (etcd client
# and peer, apiserver, kcm and scheduler secure ports, kwok's server), so two
# clusters on one machine never collide. The ports are kept in DIR/cluster.env.
# Logs go to DIR/logs.
#
# The node's kubelet API (FULL): kwok serves it on KWOK_PORT over TLS (a
# serving certificate from the cluster CA), and the node object advertises
# that port, so the API server reaches it the way it reaches a real kubelet:
# with its kubelet client certificate, verifying the serving certificate
# (--kubelet-client-certificate/-key, --kubelet-certificate-authority).
# What runs behind it (kwok's simulation resources, in DIR/kwok.yaml):
#   exec         a real local process in DIR/node/exec (any pod, any container);
#                kwok never closes its stdin, so a command that reads to EOF
#                waits forever (scripts/k8s/node/tar covers `kubectl cp`)
#   logs         DIR/node/logs/pod.log, CRI format ("<RFC3339Nano> stdout F <line>");
#                `logs -f` follows what is appended
#   attach       follows the same file from its end (stdin is not read)
#   port-forward any pod port reaches 127.0.0.1:PORTFORWARD_PORT
# A namespaced Exec, Logs, Attach or PortForward object (kwok.x-k8s.io/v1alpha1,
# CRDs installed at start) overrides these for one pod, so each test can point
# its pod at its own directory, file or server. These paths and ports are in
# DIR/cluster.env (NODE_EXEC_DIR, NODE_LOG_FILE, PORTFORWARD_PORT).
#
# With OWNER_PID=<pid>, a watcher stops the cluster when
# that process exits (so a killed `go test` does not leave a cluster behind).
# BIN overrides the binary folder (default: what build.sh prints).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)

usage() { echo "usage: [FULL=1] $0 start|stop|apiserver-stop|apiserver-start DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
CMD=$1
mkdir -p "$2"
DIR=$(cd "$2" && pwd)
PKI=$DIR/pki
LOGS=$DIR/logs
now_ms() { date +%s%3N; }

# alive PID...: any of them still runs (a zombie whose parent has gone counts as gone).
alive() {
  local p
  for p; do
    kill -0 "$p" 2>/dev/null || continue
    [ "$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null)" = Z ] || return 0
  done
  return 1
}
# stop_group NAME... : SIGTERM, wait up to 10 s, then SIGKILL.
stop_group() {
  local c pids=""
  for c; do
    if [ -f "$DIR/$c.pid" ]; then pids="$pids $(cat "$DIR/$c.pid")"; rm -f "$DIR/$c.pid"; fi
  done
  [ -n "$pids" ] || return 0
  # shellcheck disable=SC2086
  kill $pids 2>/dev/null || true
  for _ in $(seq 1 100); do
    # shellcheck disable=SC2086
    alive $pids || return 0
    sleep 0.1
  done
  # shellcheck disable=SC2086
  kill -9 $pids 2>/dev/null || true
}
# Clients first, then the apiserver, then etcd: an apiserver whose etcd is
# gone does not exit on SIGTERM.
stop_all() {
  stop_group watcher
  stop_group kwok kube-scheduler kube-controller-manager
  stop_group kube-apiserver
  stop_group etcd
  rm -rf "$DIR/etcd"
}

# port_free PORT: nothing accepts a connection there.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
PICKED=" "
# free_port: a random free port below the Linux ephemeral range (32768+), so
# outgoing connections never take it between pick and bind.
free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$(( 20000 + (RANDOM * 32768 + RANDOM) % 12000 ))
    case $PICKED in *" $p "*) continue ;; esac
    if port_free "$p"; then PICKED="$PICKED$p "; echo "$p"; return 0; fi
  done
  echo "no free port found in 20000-31999" >&2; return 1
}

# wait_http PORT PATH SECONDS PID: plain-HTTP GET on loopback until "200";
# fails at once if PID exits (e.g. its port was taken in the meantime).
wait_http() {
  local deadline=$(( $(now_ms) + $3 * 1000 )) resp
  while [ "$(now_ms)" -lt "$deadline" ]; do
    if ! alive "$4"; then echo "process $4 exited; see $LOGS" >&2; return 1; fi
    resp=$( (exec 3<>"/dev/tcp/127.0.0.1/$1" && printf 'GET %s HTTP/1.0\r\n\r\n' "$2" >&3 && head -1 <&3) 2>/dev/null || true)
    case $resp in *" 200 "*) return 0 ;; esac
    sleep 0.1
  done
  echo "timeout waiting for http://127.0.0.1:$1$2 (see $LOGS)" >&2; return 1
}
# wait_listen PORT SECONDS
wait_listen() {
  local deadline=$(( $(now_ms) + $2 * 1000 ))
  while [ "$(now_ms)" -lt "$deadline" ]; do
    port_free "$1" || return 0
    sleep 0.1
  done
  echo "timeout waiting for 127.0.0.1:$1 to listen (see $LOGS)" >&2; return 1
}
kc() { "$BIN/kubectl" --kubeconfig "$DIR/admin.kubeconfig" "$@"; }
wait_readyz() {
  local deadline=$(( $(now_ms) + $1 * 1000 ))
  while [ "$(now_ms)" -lt "$deadline" ]; do
    if kc get --raw /readyz >/dev/null 2>&1; then return 0; fi
    if ! alive "$(cat "$DIR/kube-apiserver.pid")"; then
      echo "kube-apiserver exited; last log lines:" >&2; tail -20 "$LOGS/kube-apiserver.log" >&2; return 1
    fi
    sleep 0.1
  done
  echo "timeout waiting for kube-apiserver /readyz (see $LOGS/kube-apiserver.log)" >&2; return 1
}
rss_mib() { awk '/^VmRSS:/ {printf "%d", $2 / 1024}' "/proc/$1/status" 2>/dev/null || echo "?"; }

start_apiserver() {
  "$BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$API_PORT" \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --client-ca-file "$PKI/ca.crt" \
    --token-auth-file "$PKI/tokens.csv" \
    --authorization-mode RBAC,Node \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI/sa.pub" \
    --service-account-signing-key-file "$PKI/sa.key" \
    --service-cluster-ip-range 10.0.0.0/24 \
    --allow-privileged=true \
    --endpoint-reconciler-type=none \
    --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$PKI/ca.crt" \
    --kubelet-preferred-address-types InternalIP \
    </dev/null >>"$LOGS/kube-apiserver.log" 2>&1 &
  echo $! > "$DIR/kube-apiserver.pid"
}

load_env() {
  [ -f "$DIR/cluster.env" ] || { echo "no cluster in $DIR (cluster.env missing)" >&2; exit 1; }
  # shellcheck disable=SC1091
  . "$DIR/cluster.env"
}

case $CMD in
stop)
  stop_all
  exit 0 ;;
apiserver-stop)
  # SIGKILL: an outage test wants the API gone at once, not a 10 s graceful drain.
  load_env
  if [ -f "$DIR/kube-apiserver.pid" ]; then
    pid=$(cat "$DIR/kube-apiserver.pid")
    kill -9 "$pid" 2>/dev/null || true
    while alive "$pid"; do sleep 0.05; done
    rm -f "$DIR/kube-apiserver.pid"
  fi
  exit 0 ;;
apiserver-start)
  load_env
  t0=$(now_ms)
  start_apiserver
  wait_readyz 120
  echo "kube-apiserver restarted on 127.0.0.1:$API_PORT in $(( $(now_ms) - t0 )) ms"
  exit 0 ;;
start) ;;
*) usage ;;
esac

BIN=${BIN:-$("$HERE/build.sh" --print-bin)}
FULL=${FULL:-0}
need="etcd kube-apiserver kubectl"
[ "$FULL" = 1 ] && need="$need kube-controller-manager kube-scheduler kwok kwok-stages.yaml kwok-crds.yaml"
for b in $need; do
  [ -e "$BIN/$b" ] || { echo "missing $BIN/$b: run scripts/k8s/build.sh first" >&2; exit 1; }
done
command -v openssl >/dev/null || { echo "openssl is missing: run scripts/setup-tools.sh" >&2; exit 1; }
if [ -f "$DIR/etcd.pid" ] && alive "$(cat "$DIR/etcd.pid")"; then
  echo "a cluster is already running in $DIR; stop it first" >&2; exit 1
fi
on_exit() {
  local rc=$?
  if [ "$rc" -ne 0 ]; then echo "start failed; stopping what was started" >&2; stop_all; fi
}
trap on_exit EXIT

T0=$(now_ms)
mkdir -p "$PKI" "$LOGS" "$DIR/etcd"
ETCD_PORT=$(free_port); ETCD_PEER_PORT=$(free_port); API_PORT=$(free_port)
KCM_PORT=$(free_port); SCHED_PORT=$(free_port); KWOK_PORT=$(free_port); PORTFORWARD_PORT=$(free_port)
NODE_DIR=$DIR/node
TOKEN=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
cat > "$DIR/cluster.env" <<EOF
BIN=$BIN
FULL=$FULL
ETCD_PORT=$ETCD_PORT
ETCD_PEER_PORT=$ETCD_PEER_PORT
API_PORT=$API_PORT
KCM_PORT=$KCM_PORT
SCHED_PORT=$SCHED_PORT
KWOK_PORT=$KWOK_PORT
PORTFORWARD_PORT=$PORTFORWARD_PORT
NODE_EXEC_DIR=$NODE_DIR/exec
NODE_LOG_FILE=$NODE_DIR/logs/pod.log
EOF

# --- PKI: a CA, the apiserver serving cert, the ServiceAccount signing key pair,
# and a static admin token (system:masters).
if [ ! -f "$PKI/apiserver.crt" ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=pipeops-test-ca \
    -keyout "$PKI/ca.key" -out "$PKI/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver \
    -keyout "$PKI/apiserver.key" -out "$PKI/apiserver.csr" 2>/dev/null
  printf '%s\n' \
    "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local" \
    "extendedKeyUsage=serverAuth" > "$PKI/apiserver.ext"
  openssl x509 -req -in "$PKI/apiserver.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
    -CAcreateserial -days 3650 -extfile "$PKI/apiserver.ext" -out "$PKI/apiserver.crt" 2>/dev/null
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
fi
# sign NAME SUBJECT EXTENSIONS...: a key and a certificate from the cluster CA.
sign() {
  local name=$1 subj=$2; shift 2
  [ -f "$PKI/$name.crt" ] && return 0
  openssl req -newkey rsa:2048 -nodes -subj "$subj" -keyout "$PKI/$name.key" -out "$PKI/$name.csr" 2>/dev/null
  printf '%s\n' "$@" > "$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
    -CAcreateserial -days 3650 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
}
# The API server's identity toward kubelets, as kubeadm issues it.
sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "extendedKeyUsage=clientAuth"
# The kubelet API's serving certificate (kwok serves it for the node).
sign kubelet "/O=system:nodes/CN=system:node:kwok-node-0" \
  "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kwok-node-0" "extendedKeyUsage=serverAuth"
echo "$TOKEN,admin,admin,\"system:masters\"" > "$PKI/tokens.csv"
chmod 600 "$PKI/tokens.csv"
# The CA is embedded so the kubeconfig stays valid if it is copied elsewhere.
umask 077
cat > "$DIR/admin.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: pipeops-test
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $(base64 -w0 < "$PKI/ca.crt")
users:
- name: admin
  user:
    token: $TOKEN
contexts:
- name: pipeops-test
  context: {cluster: pipeops-test, user: admin}
current-context: pipeops-test
EOF
umask 022
T_PKI=$(now_ms)

# --- etcd: single member, loopback client and peer URLs, no fsync (test data only).
"$BIN/etcd" --name local --data-dir "$DIR/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "local=http://127.0.0.1:$ETCD_PEER_PORT" \
  --unsafe-no-fsync --quota-backend-bytes=$((2 * 1024 * 1024 * 1024)) \
  </dev/null >"$LOGS/etcd.log" 2>&1 &
echo $! > "$DIR/etcd.pid"
wait_http "$ETCD_PORT" /health 30 "$(cat "$DIR/etcd.pid")"
T_ETCD=$(now_ms)

# --- kube-apiserver
start_apiserver
wait_readyz 120
T_API=$(now_ms)

if [ "$FULL" = 1 ]; then
  KC=$DIR/admin.kubeconfig
  "$BIN/kube-controller-manager" --kubeconfig "$KC" \
    --authentication-kubeconfig "$KC" --authorization-kubeconfig "$KC" \
    --bind-address 127.0.0.1 --secure-port "$KCM_PORT" --leader-elect=false \
    --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
    --use-service-account-credentials=true \
    --controllers '*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-route' \
    </dev/null >"$LOGS/kube-controller-manager.log" 2>&1 &
  echo $! > "$DIR/kube-controller-manager.pid"
  "$BIN/kube-scheduler" --kubeconfig "$KC" \
    --authentication-kubeconfig "$KC" --authorization-kubeconfig "$KC" \
    --bind-address 127.0.0.1 --secure-port "$SCHED_PORT" --leader-elect=false \
    </dev/null >"$LOGS/kube-scheduler.log" 2>&1 &
  echo $! > "$DIR/kube-scheduler.pid"
  # What the node's kubelet API runs (see the header): a scratch working
  # directory for exec, a CRI-format log file, and the default port-forward
  # target; the per-pod CRDs let a test override each for its own pod.
  mkdir -p "$NODE_DIR/exec" "$NODE_DIR/logs"
  [ -f "$NODE_DIR/logs/pod.log" ] ||
    echo "$(date -u +%Y-%m-%dT%H:%M:%S.%NZ) stdout F kwok-node-0: this line comes from $NODE_DIR/logs/pod.log" > "$NODE_DIR/logs/pod.log"
  cat > "$DIR/kwok.yaml" <<EOF
apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterExec
metadata: {name: node-exec}
spec:
  execs:
  - local: {workDir: "$NODE_DIR/exec"}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterLogs
metadata: {name: node-logs}
spec:
  logs:
  - {logsFile: "$NODE_DIR/logs/pod.log", follow: true}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterAttach
metadata: {name: node-attach}
spec:
  attaches:
  - {logsFile: "$NODE_DIR/logs/pod.log"}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterPortForward
metadata: {name: node-port-forward}
spec:
  forwards:
  - target: {address: 127.0.0.1, port: $PORTFORWARD_PORT}
EOF
  kc apply -f "$BIN/kwok-crds.yaml" >/dev/null
  kc wait --for=condition=Established --timeout=60s \
    crd/execs.kwok.x-k8s.io crd/logs.kwok.x-k8s.io crd/attaches.kwok.x-k8s.io crd/portforwards.kwok.x-k8s.io >/dev/null
  # kwok plays kubelet for nodes carrying its annotation: it keeps them Ready,
  # moves Pods bound to them to Running/Ready (no containers run), and serves
  # their kubelet API on KWOK_PORT (--node-port puts that port in the node's
  # status, where the API server looks for it).
  # scripts/k8s/node comes first on its PATH: a tar that works around kwok
  # never closing an exec's stdin (see that file), for `kubectl cp` into pods.
  PATH="$HERE/node:$PATH" "$BIN/kwok" --kubeconfig "$KC" --config "$BIN/kwok-stages.yaml" --config "$DIR/kwok.yaml" \
    --manage-all-nodes=false \
    --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --cidr=10.244.0.0/16 --node-ip=127.0.0.1 \
    --server-address "127.0.0.1:$KWOK_PORT" --node-port "$KWOK_PORT" \
    --tls-cert-file "$PKI/kubelet.crt" --tls-private-key-file "$PKI/kubelet.key" \
    --enable-crds Exec,Logs,Attach,PortForward \
    </dev/null >"$LOGS/kwok.log" 2>&1 &
  echo $! > "$DIR/kwok.pid"
  wait_listen "$KCM_PORT" 60
  wait_listen "$SCHED_PORT" 60
  wait_listen "$KWOK_PORT" 60
  kc apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-0
  annotations: {kwok.x-k8s.io/node: fake, node.alpha.kubernetes.io/ttl: "0"}
  labels: {kubernetes.io/hostname: kwok-node-0, kubernetes.io/os: linux, kubernetes.io/arch: amd64, type: kwok}
spec: {}
status:
  allocatable: {cpu: "32", memory: 256Gi, pods: "110"}
  capacity: {cpu: "32", memory: 256Gi, pods: "110"}
EOF
  kc wait --for=condition=Ready node/kwok-node-0 --timeout=60s >/dev/null
  # kcm's serviceaccount controller must have run before Pods can be created.
  deadline=$(( $(now_ms) + 60000 ))
  until kc -n default get serviceaccount default >/dev/null 2>&1; do
    [ "$(now_ms)" -lt "$deadline" ] || { echo "timeout waiting for the default ServiceAccount" >&2; exit 1; }
    sleep 0.2
  done
fi
T_END=$(now_ms)

if [ -n "${OWNER_PID:-}" ]; then
  # Stop the cluster when the owner (a test process) goes away, however it ends.
  ( trap '' HUP INT
    while kill -0 "$OWNER_PID" 2>/dev/null; do sleep 1; done
    rm -f "$DIR/watcher.pid"
    "$HERE/cluster.sh" stop "$DIR" ) </dev/null >"$LOGS/watcher.log" 2>&1 &
  echo $! > "$DIR/watcher.pid"
fi

echo "cluster started in $(( T_END - T0 )) ms (pki $(( T_PKI - T0 )) ms, etcd $(( T_ETCD - T_PKI )) ms, kube-apiserver /readyz $(( T_API - T_ETCD )) ms$([ "$FULL" = 1 ] && echo ", kcm+scheduler+kwok+node Ready $(( T_END - T_API )) ms"))"
total=0
for c in etcd kube-apiserver kube-controller-manager kube-scheduler kwok; do
  [ -f "$DIR/$c.pid" ] || continue
  r=$(rss_mib "$(cat "$DIR/$c.pid")")
  [ "$r" = "?" ] || total=$((total + r))
  printf '  %-24s pid %-7s RSS %s MiB\n' "$c" "$(cat "$DIR/$c.pid")" "$r"
done
echo "  total RSS $total MiB; apiserver https://127.0.0.1:$API_PORT"
echo "export KUBECONFIG=$DIR/admin.kubeconfig"
