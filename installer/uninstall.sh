#!/bin/sh
# pipeops-uninstall.sh: written next to the binaries by "pipeopsctl install"
# (a script install only; packages are removed with apt or dnf). It removes
# pipeops-agent completely: service, unit, the agent's ServiceAccount, token
# and RBAC in the cluster, binaries, completion scripts, /etc/pipeops,
# /var/lib/pipeops and /var/cache/pipeops, then deletes itself.
# PIPEOPS_DRY_RUN=1 prints what it would run.

run() {
	if [ "${PIPEOPS_DRY_RUN:-}" = 1 ]; then
		echo "+ $*"
	else
		"$@"
	fi
}

fallback() {
	# pipeopsctl is gone: do by hand what "pipeopsctl uninstall --purge" does.
	unit=/etc/systemd/system/pipeops-agent.service
	if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
		run systemctl disable --now pipeops-agent.service 2>/dev/null || true
	fi
	# The agent's ServiceAccount, token and RBAC in the cluster (best effort).
	if [ -x "$1/pipeops-agent" ]; then
		run "$1/pipeops-agent" remove-identity || echo "pipeops-uninstall.sh: the agent's cluster identity may remain; see pipeops-agent remove-identity" >&2
	fi
	run rm -f "$unit"
	run rm -rf "$unit.d"
	if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
		run systemctl daemon-reload || true
	fi
	run rm -f "$1/pipeops-agent" "$1/pipeopsctl" "$1/pipeops-agent-helm"
	run rm -f /usr/share/bash-completion/completions/pipeopsctl /usr/share/zsh/vendor-completions/_pipeopsctl \
		/usr/share/zsh/site-functions/_pipeopsctl /usr/share/fish/vendor_completions.d/pipeopsctl.fish
	run rm -rf /etc/pipeops /var/lib/pipeops /var/cache/pipeops /etc/default/pipeops-agent
	run rm -f /etc/credstore.encrypted/pipeops-agent.token
}

main() {
	set -eu
	if [ "$(id -u)" != 0 ]; then
		echo "pipeops-uninstall.sh: run it as root (sudo $0)" >&2
		exit 1
	fi
	if [ -f /usr/lib/systemd/system/pipeops-agent.service ]; then
		echo "pipeops-uninstall.sh: pipeops-agent came from a package; remove it with apt-get purge pipeops-agent or dnf remove pipeops-agent" >&2
		exit 1
	fi
	dir=$(cd "$(dirname "$0")" && pwd)
	self="$dir/$(basename "$0")"
	if [ "${PIPEOPS_DRY_RUN:-}" != 1 ]; then
		# shellcheck disable=SC2064 # expand now: $self is fixed
		trap "rm -f '$self'" EXIT
	fi
	if [ -x "$dir/pipeopsctl" ]; then
		run "$dir/pipeopsctl" uninstall --purge --bin-dir "$dir"
	else
		fallback "$dir"
	fi
	echo "pipeops-agent removed"
}

main "$@"
