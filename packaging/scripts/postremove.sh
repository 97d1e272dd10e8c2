#!/bin/sh
# postremove for the deb and the rpm:
#   deb: remove | purge | upgrade NEW | failed-upgrade | abort-install | abort-upgrade | disappear
#   rpm: 0 = erase, 1 = upgrade
# purge (deb only) removes the token (plain or the encrypted credential),
# drop-ins, state and cache; dpkg itself removes the conffiles. rpm has no
# purge: its erase keeps them, like remove. The agent's ServiceAccount and RBAC
# in the cluster stay: run "sudo pipeops-agent remove-identity" before purging.
set -e
case "${1:-}" in
purge)
	rm -rf /etc/pipeops /var/lib/pipeops /var/cache/pipeops
	rm -f /etc/credstore.encrypted/pipeops-agent.token
	;;
esac
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
