#!/bin/sh
# preremove for the deb and the rpm:
#   deb: remove | upgrade NEW | deconfigure | failed-upgrade
#   rpm: 0 = erase, 1 = upgrade (runs AFTER the new package's %post)
# Stop and disable only on a real removal: during an rpm upgrade this is
# the OLD package's script, and disabling here would undo the new install.
set -e
case "${1:-}" in
remove | 0)
	if [ -d /run/systemd/system ]; then
		systemctl disable --now pipeops-agent.service >/dev/null 2>&1 || true
	fi
	;;
esac
exit 0
