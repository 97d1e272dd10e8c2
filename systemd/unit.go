// Package systemd holds the agent's only unit file, embedded so that
// pipeopsctl install writes exactly the bytes the deb and rpm ship. It imports
// the standard library only.
package systemd

import _ "embed" // for the unit file

// UnitName is the unit's file name under /etc/systemd/system or
// /usr/lib/systemd/system.
const UnitName = "pipeops-agent.service"

// Unit is the text of pipeops-agent.service. kardianos/service renders it as
// a template, so it never contains a double opening brace (a test checks).
//
//go:embed pipeops-agent.service
var Unit string
