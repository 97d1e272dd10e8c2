#!/usr/bin/env bash
# scripts/host/nspawn.sh ROOTFS OLD_DIR NEW_DIR - the systemd tier.
#
# Boots the cached Debian 12 tree with systemd-nspawn (systemd 252 as PID 1,
# throwaway copy through -x, host network) and drives it with nsenter:
#   1. the .deb: install (enabled, inactive without a token), pipeopsctl install
#      → the token becomes an encrypted systemd credential (the file on disk
#      does not contain it), the service reaches READY, registers with the
#      reference control plane (pipeops-devplane on the host, which accepts
#      only that token) using a real API server, and pipeopsctl status answers;
#      man pipeopsctl and bash completion work from the installed files;
#   2. upgrade to the newer snapshot: config, drop-ins and token are kept;
#   3. the watchdog kills and restarts an agent whose daemon loop, then whose
#      link loop, hangs (a test build's stall hook; see watchdog_loops);
#   4. remove, then purge: nothing left;
#   5. install.sh from a local HTTP server serving the snapshot, rerun
#      (idempotent), then the generated uninstall script, which also deletes
#      the agent's ServiceAccount and RBAC from the cluster;
#   6. the rpm through Debian's rpm (--nodeps): install, upgrade (where the new
#      %post runs BEFORE the old %preun: the agent must stay enabled and
#      running), erase.
# OLD_DIR and NEW_DIR hold goreleaser snapshot artifacts (scripts/host/release.sh).
# The API server is $PIPEOPS_TEST_KUBECONFIG's (scripts/test.sh starts one),
# else one this script starts with scripts/k8s/cluster.sh.
set -euo pipefail
ROOTFS=${1:?usage: nspawn.sh ROOTFS OLD_DIR NEW_DIR}
OLD=$(cd "${2:?}" && pwd)
NEW=$(cd "${3:?}" && pwd)
REPO=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d /tmp/pipeops-nspawn.XXXXXX)
ARCH=$(dpkg --print-architecture)
NSPAWN_PID='' CT='' HTTP_PID='' DP_PID='' K8S_DIR=''
ENC_TOKEN=/etc/credstore.encrypted/pipeops-agent.token
t0=$SECONDS

step() { printf '==> [nspawn %3ss] %s\n' "$((SECONDS - t0))" "$*"; }
fail() {
  printf 'FAIL: %s\n' "$*" >&2
  if [ -n "$CT" ]; then
    echo "--- journal of pipeops-agent (last 60 lines)" >&2
    in_ct journalctl -u pipeops-agent.service --no-pager -n 60 >&2 || true
  fi
  exit 1
}
in_ct() { nsenter -t "$CT" -a -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root "$@"; }
# ct_sh runs a shell snippet inside the container.
ct_sh() { in_ct sh -c "$1"; }
show() { in_ct systemctl show pipeops-agent.service -p "$1" --value; }

cleanup() {
  set +e
  if [ -n "$CT" ]; then in_ct systemctl poweroff >/dev/null 2>&1; fi
  if [ -n "$NSPAWN_PID" ]; then
    for _ in $(seq 100); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.2; done
    kill "$NSPAWN_PID" 2>/dev/null
  fi
  [ -n "$HTTP_PID" ] && kill "$HTTP_PID" 2>/dev/null
  [ -n "$DP_PID" ] && kill "$DP_PID" 2>/dev/null
  [ -n "${KUBECTL:-}" ] && "$KUBECTL" --kubeconfig "$WORK/artifacts/admin.kubeconfig" delete namespace nspawn-agent nspawn-script nspawn-rpm \
    --ignore-not-found --wait=false >/dev/null 2>&1
  [ -n "$K8S_DIR" ] && "$REPO/scripts/k8s/cluster.sh" stop "$K8S_DIR" >/dev/null 2>&1
  rm -rf "$WORK"
}
trap cleanup EXIT

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2
  shift 2
  local end=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$end" ] || fail "timed out after ${limit}s waiting for $what"
    sleep 0.5
  done
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# control_plane starts a Kubernetes API server (or reuses the test run's) and
# the reference control plane on the host's loopback, which the container
# shares: the agent needs both to register.
control_plane() {
  BIN=$("$REPO/scripts/k8s/build.sh" 2>/dev/null | tail -n 1)
  KUBECTL=$BIN/kubectl
  if [ -n "${PIPEOPS_TEST_KUBECONFIG:-}" ]; then
    cp "$PIPEOPS_TEST_KUBECONFIG" "$WORK/artifacts/admin.kubeconfig"
  else
    K8S_DIR=$WORK/k8s
    "$REPO/scripts/k8s/cluster.sh" start "$K8S_DIR" >"$WORK/k8s.log" 2>&1 || { cat "$WORK/k8s.log" >&2; fail "cannot start a Kubernetes API server"; }
    cp "$K8S_DIR/admin.kubeconfig" "$WORK/artifacts/admin.kubeconfig"
  fi
  (cd "$REPO" && go build -o "$WORK/pipeops-devplane" ./cmd/pipeops-devplane) || fail "cannot build pipeops-devplane"
  DP_PORT=$(free_port)
  "$WORK/pipeops-devplane" --listen "127.0.0.1:$DP_PORT" --token nspawn-token --token script-token --token rpm-token \
    >"$WORK/devplane.log" 2>&1 &
  DP_PID=$!
  wait_for 20 "the reference control plane" curl -fsS -o /dev/null "http://127.0.0.1:$DP_PORT/admin/clusters"
  DP_URL=http://127.0.0.1:$DP_PORT
  step "control plane at $DP_URL, API server $(grep -m1 'server:' "$WORK/artifacts/admin.kubeconfig" | awk '{print $2}')"
}

# registered NAME succeeds once the control plane lists a registration of NAME.
registered() {
  curl -fsS "$DP_URL/admin/clusters" | python3 -c '
import json, sys
sys.exit(0 if any(c.get("name") == sys.argv[1] and c.get("registrations", 0) > 0 for c in json.load(sys.stdin)) else 1)' "$1"
}

# sa_exists succeeds while the agent's ServiceAccount is in the cluster.
sa_exists() { "$KUBECTL" --kubeconfig "$WORK/artifacts/admin.kubeconfig" get serviceaccount -n "$1" pipeops-agent >/dev/null 2>&1; }

# ct_token prints the installed token as the agent would get it.
ct_token() { in_ct systemd-creds decrypt --name=token "$ENC_TOKEN" - 2>/dev/null; }

boot() {
  mkdir -p "$WORK/artifacts"
  cp -a "$OLD" "$WORK/artifacts/old"
  cp -a "$NEW" "$WORK/artifacts/new"
  systemd-nspawn -q -D "$ROOTFS" -x -b --register=no --keep-unit --console=pipe \
    --bind-ro="$WORK/artifacts:/artifacts" >"$WORK/boot.log" 2>&1 </dev/null &
  NSPAWN_PID=$!
  local end=$((SECONDS + 60))
  while [ -z "$CT" ]; do
    kill -0 "$NSPAWN_PID" 2>/dev/null || { cat "$WORK/boot.log" >&2; fail "systemd-nspawn exited"; }
    [ "$SECONDS" -lt "$end" ] || fail "the container's systemd did not appear"
    CT=$({ ps -o pid=,comm= --ppid "$NSPAWN_PID" || true; } | awk '$2 == "systemd" {print $1; exit}')
    sleep 0.2
  done
  wait_for 60 "the container to finish booting" sh -c "nsenter -t $CT -a -- systemctl is-system-running --wait | grep -Eq 'running|degraded'"
  step "booted $(in_ct systemctl --version | head -n1) as PID 1"
}

# test_dropin writes a test drop-in: a free port for the agent's loopback
# status server (the host network is shared), the test cluster's kubeconfig,
# and a namespace of its own (NAMESPACE, default nspawn-agent) for the
# agent's ServiceAccount and RBAC.
test_dropin() {
  ct_sh "mkdir -p /etc/pipeops/agent.d && cp /artifacts/admin.kubeconfig /etc/pipeops/test.kubeconfig &&
    printf 'version: 1\nagent:\n  port: $(free_port)\nkubernetes:\n  kubeconfig: /etc/pipeops/test.kubeconfig\n  namespace: ${1:-nspawn-agent}\n' > /etc/pipeops/agent.d/50-test.yaml"
}

# cli_docs_check: "man pipeopsctl" and "man pipeops-agent" render from the
# package's pages, and bash-completion completes pipeopsctl from its script.
cli_docs_check() {
  ct_sh 'MANWIDTH=80 man pipeopsctl 2>&1' >"$WORK/man.txt" || { cat "$WORK/man.txt"; fail "man pipeopsctl failed"; }
  grep -q 'pipeopsctl - manage the PipeOps agent' "$WORK/man.txt" || { head -n 20 "$WORK/man.txt"; fail "man pipeopsctl shows no NAME line"; }
  ct_sh 'MANWIDTH=80 man 8 pipeops-agent 2>&1' | grep -q 'pipeops-agent - ' || fail "man 8 pipeops-agent failed"
  cat >"$WORK/complete.bash" <<'SH'
. /usr/share/bash-completion/bash_completion
_completion_loader pipeopsctl
COMP_WORDS=(pipeopsctl st) COMP_CWORD=1
_pipeopsctl
echo "${COMPREPLY[*]}"
SH
  in_ct bash -c "$(cat "$WORK/complete.bash")" >"$WORK/complete.txt" 2>&1 ||
    { cat "$WORK/complete.txt"; fail "bash completion of pipeopsctl failed"; }
  grep -qw status "$WORK/complete.txt" || { cat "$WORK/complete.txt"; fail "bash completion of \"pipeopsctl st\" did not offer status"; }
  step "man pipeopsctl and bash completion work (pipeopsctl st<TAB>: $(cat "$WORK/complete.txt"))"
}

# watchdog_loops: the real systemd restarts an agent whose watched loop
# hangs. The stall hook that wedges a loop is a test seam production builds
# lack, so a drop-in runs a test build (-tags pipeops_testhooks) for this
# step only; the wedge is the loop's name in /run/pipeops/wedge.
watchdog_loops() {
  step "build pipeops-agent with its test seams (-tags pipeops_testhooks)"
  (cd "$REPO" && CGO_ENABLED=0 go build -trimpath -tags pipeops_testhooks \
    -o "$WORK/artifacts/pipeops-agent-testhooks" ./cmd/pipeops-agent) || fail "go build -tags pipeops_testhooks failed"
  local dropin=/etc/systemd/system/pipeops-agent.service.d/50-test-watchdog.conf
  ct_sh "mkdir -p ${dropin%/*} &&
    printf '[Service]\nWatchdogSec=5s\nExecStart=\nExecStart=/artifacts/pipeops-agent-testhooks run\n' > $dropin &&
    systemctl daemon-reload && systemctl restart pipeops-agent.service"
  local loop pid restarts timeouts=''
  for loop in daemon link; do
    step "the watchdog restarts an agent whose $loop loop hangs"
    wait_for 60 "the agent to be active" sh -c "[ \"\$(nsenter -t $CT -a -- systemctl is-active pipeops-agent.service)\" = active ]"
    pid=$(show MainPID)
    restarts=$(show NRestarts)
    [ -n "$timeouts" ] || timeouts=$(in_ct journalctl -u pipeops-agent.service --no-pager | grep -c 'Watchdog timeout' || true)
    in_ct sh -c "echo $loop > /run/pipeops/wedge"
    # The loop wedges at its next step, stays busy past half of
    # WatchdogSec (2.5 s), then the pings stop and WatchdogSec=5s fires.
    wait_for 90 "a watchdog restart" sh -c "[ \"\$(nsenter -t $CT -a -- systemctl show pipeops-agent.service -p NRestarts --value)\" -gt $restarts ]"
    in_ct rm -f /run/pipeops/wedge
    # Into a file first: grep -q would end the pipe early, and pipefail fail it.
    in_ct journalctl -u pipeops-agent.service --no-pager >"$WORK/journal-$loop.txt"
    [ "$(grep -c 'Watchdog timeout' "$WORK/journal-$loop.txt" || true)" -gt "$timeouts" ] ||
      fail "no new watchdog timeout in the journal after wedging the $loop loop"
    grep -Eq "\"stuck\":\"([^\"]*,)?$loop(,[^\"]*)?\"" "$WORK/journal-$loop.txt" ||
      fail "the agent did not log that its $loop loop was stuck"
    timeouts=$(grep -c 'Watchdog timeout' "$WORK/journal-$loop.txt" || true)
    wait_for 60 "the agent to be active again" sh -c "[ \"\$(nsenter -t $CT -a -- systemctl is-active pipeops-agent.service)\" = active ]"
    [ "$(show MainPID)" != "$pid" ] || fail "the watchdog did not replace the process"
  done
  in_ct rm -f "$dropin"
  ct_sh 'systemctl daemon-reload && systemctl restart pipeops-agent.service'
}

deb_tier() {
  local old_deb new_deb
  old_deb=$(cd "$WORK/artifacts/old" && ls pipeops-agent_*_"$ARCH".deb)
  new_deb=$(cd "$WORK/artifacts/new" && ls pipeops-agent_*_"$ARCH".deb)

  step "dpkg -i $old_deb"
  in_ct dpkg -i "/artifacts/old/$old_deb" >/dev/null || fail "dpkg -i failed"
  [ "$(in_ct systemctl is-enabled pipeops-agent.service)" = enabled ] || fail "the package did not enable the unit"
  [ "$(show ActiveState)" = inactive ] || fail "the package started the agent without a token"
  in_ct test ! -e /etc/systemd/system/pipeops-agent.service || fail "a unit in /etc shadows the packaged one"
  cli_docs_check

  step "pipeopsctl install (package-owned unit) → encrypted credential, READY"
  test_dropin
  ct_sh "echo nspawn-token | pipeopsctl install --token-file - --api-url $DP_URL --cluster-name nspawn" >"$WORK/install.txt" 2>&1 ||
    { cat "$WORK/install.txt"; fail "pipeopsctl install failed"; }
  [ "$(show ActiveState)" = active ] || fail "agent not active after pipeopsctl install (Type=notify start returned)"
  in_ct test ! -e /etc/systemd/system/pipeops-agent.service || fail "pipeopsctl install wrote a unit over a package install"
  in_ct test ! -e /etc/pipeops/token || fail "the plain token file exists beside the encrypted credential"
  [ "$(in_ct stat -c %a "$ENC_TOKEN")" = 600 ] || fail "the encrypted credential is not 0600"
  ! in_ct grep -q nspawn-token "$ENC_TOKEN" || fail "the credential on disk contains the token in clear text"
  in_ct grep -q nspawn-token /proc/"$(show MainPID)"/environ && fail "the token is in the agent's environment"
  step "the agent registers with the token systemd decrypted (LoadCredentialEncrypted=)"
  wait_for 120 "a registration of cluster nspawn" registered nspawn
  sa_exists nspawn-agent || fail "the agent's ServiceAccount is not in the cluster"
  step "StatusText: $(show StatusText)"
  in_ct pipeopsctl status >"$WORK/status.txt" || fail "pipeopsctl status failed: $(cat "$WORK/status.txt")"
  grep -q '^Agent:' "$WORK/status.txt" || fail "pipeopsctl status printed no agent line"
  in_ct pipeopsctl doctor >"$WORK/doctor.txt" || true # no cluster here: kubernetes FAILs
  grep -q '^OK    service' "$WORK/doctor.txt" || { cat "$WORK/doctor.txt"; fail "doctor does not see the running unit"; }
  grep -q '^OK    token' "$WORK/doctor.txt" || { cat "$WORK/doctor.txt"; fail "doctor does not see the token"; }

  step "pipeopsctl install again changes nothing and keeps the PID"
  local pid
  pid=$(show MainPID)
  in_ct pipeopsctl install </dev/null >"$WORK/install-again.txt" || fail "second pipeopsctl install failed"
  grep -q 'nothing changed' "$WORK/install-again.txt" || fail "second pipeopsctl install changed something"
  [ "$(show MainPID)" = "$pid" ] || fail "second pipeopsctl install restarted the agent"

  step "upgrade to $new_deb keeps the config"
  ct_sh 'printf "# edited by the admin\n" >> /etc/pipeops/agent.yaml'
  ct_sh 'printf "version: 1\nlogging:\n  level: debug\n" > /etc/pipeops/agent.d/60-admin.yaml'
  in_ct dpkg -i "/artifacts/new/$new_deb" </dev/null >/dev/null || fail "dpkg -i of the newer package failed"
  in_ct grep -q 'edited by the admin' /etc/pipeops/agent.yaml || fail "upgrade replaced the edited agent.yaml"
  in_ct test -s /etc/pipeops/agent.d/60-admin.yaml || fail "upgrade lost agent.d/60-admin.yaml"
  in_ct grep -q nspawn /etc/pipeops/agent.d/10-install.yaml || fail "upgrade lost 10-install.yaml"
  [ "$(ct_token)" = nspawn-token ] || fail "upgrade lost the token"
  [ "$(show ActiveState)" = active ] || fail "agent not active after the upgrade"
  [ "$(show MainPID)" != "$pid" ] || fail "the upgrade did not restart the agent"
  local want_version got_version
  want_version=$(basename "$new_deb" | cut -d_ -f2 | tr '~' '-')
  got_version=$(in_ct pipeops-agent version)
  [[ "$got_version" == *"$want_version"* ]] || fail "the upgraded binary reports $got_version, not $want_version"
  got_version=$(in_ct pipeops-agent-helm version)
  [[ "$got_version" == *"$want_version"* ]] || fail "the Helm worker reports $got_version, not $want_version"

  watchdog_loops

  step "pipeops-agent remove-identity (the package's way) deletes the ServiceAccount"
  in_ct systemctl stop pipeops-agent.service
  in_ct pipeops-agent remove-identity >"$WORK/remove-identity.txt" 2>&1 || { cat "$WORK/remove-identity.txt"; fail "remove-identity failed"; }
  grep -q 'removed serviceaccount nspawn-agent/pipeops-agent' "$WORK/remove-identity.txt" || { cat "$WORK/remove-identity.txt"; fail "remove-identity removed no ServiceAccount"; }
  ! sa_exists nspawn-agent || fail "the ServiceAccount is still in the cluster after remove-identity"

  step "dpkg -r keeps token and state; dpkg -P removes everything"
  in_ct dpkg -r pipeops-agent >/dev/null || fail "dpkg -r failed"
  [ "$(show LoadState)" = not-found ] || fail "the unit is still loaded after dpkg -r"
  in_ct test ! -e /usr/bin/pipeops-agent || fail "dpkg -r left the binary"
  in_ct test -s "$ENC_TOKEN" || fail "dpkg -r removed the token"
  in_ct dpkg -P pipeops-agent >/dev/null || fail "dpkg -P failed"
  for p in /etc/pipeops "$ENC_TOKEN" /var/lib/pipeops /etc/default/pipeops-agent /usr/lib/systemd/system/pipeops-agent.service; do
    in_ct test ! -e "$p" || fail "purge left $p"
  done
}

script_tier() {
  step "install.sh from a local HTTP server"
  local srv=$WORK/srv port
  mkdir -p "$srv/latest/download"
  cp "$NEW"/*.tar.gz "$NEW/checksums.txt" "$srv/latest/download/"
  cp "$REPO/installer/install.sh" "$srv/install.sh"
  port=$(free_port)
  python3 -u -m http.server --bind 127.0.0.1 --directory "$srv" "$port" >"$WORK/http.log" 2>&1 &
  HTTP_PID=$!
  wait_for 10 "the HTTP server" curl -fsS -o /dev/null "http://127.0.0.1:$port/install.sh"
  test_dropin nspawn-script
  local url="http://127.0.0.1:$port"
  ct_sh "curl -sfL $url/install.sh | PIPEOPS_TOKEN=script-token PIPEOPS_INSTALL_BASE_URL=$url PIPEOPS_API_URL=$DP_URL PIPEOPS_CLUSTER_NAME=scripted sh -" \
    >"$WORK/install1.log" 2>&1 || { cat "$WORK/install1.log"; fail "install.sh failed"; }
  grep -q 'sha256 verified' "$WORK/install1.log" || fail "install.sh did not verify the checksum"
  [ "$(show ActiveState)" = active ] || fail "agent not active after install.sh"
  in_ct cat /etc/systemd/system/pipeops-agent.service | cmp -s - "$REPO/systemd/pipeops-agent.service" ||
    fail "kardianos/service did not write the unit byte for byte"
  [ "$(ct_token)" = script-token ] || fail "install.sh did not install the token as an encrypted credential"
  wait_for 120 "a registration of cluster scripted" registered scripted
  in_ct pipeopsctl status >/dev/null || fail "pipeopsctl status failed after install.sh"
  in_ct test -s /usr/share/bash-completion/completions/pipeopsctl || fail "install.sh did not install the bash completion"

  step "install.sh again is idempotent"
  local pid
  pid=$(show MainPID)
  ct_sh "curl -sfL $url/install.sh | PIPEOPS_INSTALL_BASE_URL=$url sh -" >"$WORK/install2.log" 2>&1 ||
    { cat "$WORK/install2.log"; fail "second install.sh failed"; }
  grep -q 'nothing changed' "$WORK/install2.log" || { cat "$WORK/install2.log"; fail "second install.sh changed something"; }
  [ "$(show MainPID)" = "$pid" ] || fail "second install.sh restarted the agent"

  step "pipeops-uninstall.sh removes everything, the cluster identity included"
  sa_exists nspawn-script || fail "the script install's ServiceAccount is not in the cluster"
  in_ct /usr/bin/pipeops-uninstall.sh >"$WORK/uninstall.txt" 2>&1 || { cat "$WORK/uninstall.txt"; fail "the uninstall script failed"; }
  grep -q 'removed serviceaccount nspawn-script/pipeops-agent' "$WORK/uninstall.txt" ||
    { cat "$WORK/uninstall.txt"; fail "the uninstall did not say it removed the ServiceAccount"; }
  ! sa_exists nspawn-script || fail "the ServiceAccount is still in the cluster after the uninstall"
  [ "$(show LoadState)" = not-found ] || fail "the unit is still loaded after uninstall"
  for p in /usr/bin/pipeops-agent /usr/bin/pipeopsctl /usr/bin/pipeops-agent-helm /usr/bin/pipeops-uninstall.sh /etc/pipeops "$ENC_TOKEN" /var/lib/pipeops \
    /etc/systemd/system/pipeops-agent.service /usr/share/bash-completion/completions/pipeopsctl; do
    in_ct test ! -e "$p" || fail "uninstall left $p"
  done
}

rpm_tier() {
  local rpm_arch old_rpm new_rpm pid
  rpm_arch=$([ "$ARCH" = amd64 ] && echo x86_64 || echo aarch64)
  old_rpm=$(cd "$WORK/artifacts/old" && ls pipeops-agent-*."$rpm_arch".rpm)
  new_rpm=$(cd "$WORK/artifacts/new" && ls pipeops-agent-*."$rpm_arch".rpm)
  in_ct sh -c 'command -v rpm' >/dev/null || fail "rpm is missing from the container (rebuild it with scripts/host/rootfs.sh)"

  step "rpm -i $old_rpm"
  in_ct rpm -i --nodeps "/artifacts/old/$old_rpm" >/dev/null 2>&1 || fail "rpm -i failed"
  [ "$(in_ct systemctl is-enabled pipeops-agent.service)" = enabled ] || fail "the rpm did not enable the unit"
  [ "$(show ActiveState)" = inactive ] || fail "the rpm started the agent without a token"
  test_dropin nspawn-rpm
  ct_sh 'echo rpm-token | pipeopsctl install --token-file -' >/dev/null || fail "pipeopsctl install failed on the rpm"
  [ "$(show ActiveState)" = active ] || fail "agent not active on the rpm install"
  pid=$(show MainPID)

  step "rpm -U $new_rpm keeps it enabled, running and configured"
  ct_sh 'printf "# edited by the admin\n" >> /etc/pipeops/agent.yaml'
  in_ct rpm -U --nodeps "/artifacts/new/$new_rpm" >/dev/null 2>&1 || fail "rpm -U failed"
  [ "$(in_ct systemctl is-enabled pipeops-agent.service)" = enabled ] || fail "the old %preun disabled the unit during the upgrade"
  [ "$(show ActiveState)" = active ] || fail "the agent is not running after rpm -U"
  [ "$(show MainPID)" != "$pid" ] || fail "rpm -U did not restart the agent"
  in_ct grep -q 'edited by the admin' /etc/pipeops/agent.yaml || fail "rpm -U replaced the edited agent.yaml"
  [ "$(ct_token)" = rpm-token ] || fail "rpm -U lost the token"

  in_ct systemctl stop pipeops-agent.service
  in_ct pipeops-agent remove-identity >/dev/null 2>&1 || fail "remove-identity failed on the rpm install"

  step "rpm -e stops, disables and removes; edited config saved as .rpmsave"
  in_ct rpm -e --nodeps pipeops-agent >/dev/null 2>&1 || fail "rpm -e failed"
  [ "$(show LoadState)" = not-found ] || fail "the unit is still loaded after rpm -e"
  in_ct test ! -e /usr/bin/pipeops-agent || fail "rpm -e left the binary"
  in_ct test -e /etc/pipeops/agent.yaml.rpmsave || fail "rpm -e did not keep the edited agent.yaml as .rpmsave"
}

boot
control_plane
deb_tier
script_tier
rpm_tier
step "systemd tier passed"
