#!/bin/sh
# postremove for the deb and the rpm:
#   deb: remove | purge | upgrade NEW | failed-upgrade | abort-install | abort-upgrade | disappear
#   rpm: 0 = erase, 1 = upgrade
# purge (deb only) removes the token, drop-ins, state and cache; dpkg itself
# removes the conffiles. rpm has no purge: its erase keeps them, like remove.
set -e
case "${1:-}" in
purge)
	rm -rf /etc/pipeops /var/lib/pipeops /var/cache/pipeops
	;;
esac
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
