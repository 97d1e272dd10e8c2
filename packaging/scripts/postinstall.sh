#!/bin/sh
# postinstall for the deb and the rpm (one script, platform.md §5):
#   deb: configure ""       = fresh install    configure OLD-VERSION = upgrade
#   rpm: 1                  = fresh install    2                     = upgrade
# A fresh install enables the unit but never starts it (there is no token
# yet; ConditionPathExists= would skip the start anyway). An upgrade
# restarts the agent only if it was running (try-restart).
set -e

upgrade=false
case "${1:-}" in
configure) [ -n "${2:-}" ] && upgrade=true ;;
2) upgrade=true ;;
abort-upgrade | abort-remove | abort-deconfigure) exit 0 ;;
esac

# The token and settings directory; the token itself comes from pipeopsctl install.
mkdir -p /etc/pipeops/agent.d
chmod 0755 /etc/pipeops

if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
	if [ "$upgrade" = true ]; then
		systemctl try-restart pipeops-agent.service >/dev/null 2>&1 || true
	else
		systemctl enable pipeops-agent.service >/dev/null 2>&1 || true
	fi
fi

if [ "$upgrade" = false ] && [ ! -s /etc/pipeops/token ] && [ ! -s /etc/credstore.encrypted/pipeops-agent.token ]; then
	echo "pipeops-agent is installed. Connect it with:"
	echo "  sudo pipeopsctl install --token-file FILE [--cluster-name NAME]"
fi
exit 0
