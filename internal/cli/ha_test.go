package cli

import (
	"bytes"
	"testing"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
)

func sampleHA(role string) *apitype.HAStatus {
	return &apitype.HAStatus{Role: role, Identity: "node-b", Leader: "node-a", LeaderSince: fixedNow.Add(-3 * time.Minute),
		LeaseDuration: "10s", RenewDeadline: "7s", RetryPeriod: "1s",
		Candidates: []apitype.HACandidate{
			{Identity: "node-a", Renewed: fixedNow.Add(-2 * time.Second), Alive: true, Leader: true},
			{Identity: "node-b", Renewed: fixedNow.Add(-4 * time.Second), Alive: true, Self: true},
			{Identity: "node-c", Renewed: fixedNow.Add(-5 * time.Minute)},
		}}
}

func TestHAStatusShowsTheLeaderSinceWhenAndEveryCandidate(t *testing.T) {
	var b bytes.Buffer
	renderHA(&b, sampleHA(apitype.HAStandby), fixedNow)
	golden(t, "ha-status", b.String())
}

func TestStatusOnAStandbyNamesTheActiveAgent(t *testing.T) {
	got := haLine(sampleHA(apitype.HAStandby), fixedNow)
	if want := "node-b is a standby; active on node-a since 2026-11-25T11:57:00Z (3m0s ago)"; got != want {
		t.Errorf("haLine = %q; want %q", got, want)
	}
}
