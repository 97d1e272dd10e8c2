package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/localclient"
	"github.com/pipeops/pipeops-vm-agent/internal/paths"
)

func newStatusCommand(e *env) *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "show what the agent is doing (exit 3 when it is not running)",
		Flags: []cli.Flag{jsonFlag},
		Action: func(c *cli.Context) error {
			ctx, cancel := context.WithTimeout(c.Context, 5*time.Second)
			defer cancel()
			st, err := e.client.Status(ctx)
			if errors.Is(err, localclient.ErrAgentNotRunning) {
				svc := serviceState(ctx, e)
				if c.Bool("json") {
					_ = json.NewEncoder(e.stdout).Encode(map[string]any{"running": false, "service": svc, "hint": svc.Hint})
					return withCode(ExitNotRunning, errSilent)
				}
				return withCode(ExitNotRunning, fmt.Errorf("%s\nhint: %s", svc.Summary, svc.Hint))
			}
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return writeJSON(e.stdout, st)
			}
			renderStatus(e, st, e.now())
			return nil
		},
	}
}

// Service is the unit's state as systemd reports it.
type Service struct {
	Installed   bool   `json:"installed"`
	ActiveState string `json:"active_state,omitempty"`
	SubState    string `json:"sub_state,omitempty"`
	Result      string `json:"result,omitempty"`
	StatusText  string `json:"status_text,omitempty"`
	NRestarts   string `json:"restarts,omitempty"`
	Summary     string `json:"summary"`
	Hint        string `json:"-"`
}

// serviceState explains why the socket is missing, instead of a dial error.
func serviceState(ctx context.Context, e *env) Service {
	out, err := e.systemctl(ctx, "show", paths.UnitName, "-p", "LoadState,ActiveState,SubState,Result,StatusText,NRestarts")
	if err != nil {
		return Service{Summary: "pipeops-agent is not running (no answer on " + e.client.SocketPath() + "), and systemd is not available here",
			Hint: "start it in the foreground with \"pipeops-agent run\", or pass --socket if it uses another socket"}
	}
	kv := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok {
			kv[k] = v
		}
	}
	s := Service{Installed: kv["LoadState"] == "loaded", ActiveState: kv["ActiveState"], SubState: kv["SubState"],
		Result: kv["Result"], StatusText: kv["StatusText"], NRestarts: kv["NRestarts"]}
	switch {
	case !s.Installed:
		s.Summary, s.Hint = "pipeops-agent is not installed on this host", "install it with \"sudo pipeopsctl install --token-file FILE\""
	case s.ActiveState == "active" || s.ActiveState == "activating" || s.ActiveState == "reloading":
		s.Summary = fmt.Sprintf("pipeops-agent service is %s (%s) but its local API does not answer on %s", s.ActiveState, s.SubState, e.client.SocketPath())
		s.Hint = "it may still be starting; check \"pipeopsctl logs -n 50\""
	case s.ActiveState == "failed":
		s.Summary = fmt.Sprintf("pipeops-agent service failed (result: %s)", s.Result)
		s.Hint = "see why with \"pipeopsctl logs -n 50\", fix it, then \"sudo systemctl restart pipeops-agent\""
	default:
		s.Summary = fmt.Sprintf("pipeops-agent service is installed but %s", s.ActiveState)
		s.Hint = "start it with \"sudo systemctl start pipeops-agent\" (it stays inactive while it has no token: run \"sudo pipeopsctl install --token-file FILE\")"
	}
	return s
}

func ago(now, t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := now.Sub(t).Round(time.Second)
	if d < 0 {
		d = 0
	}
	return d.String() + " ago"
}

// haLine is this agent's part in high availability: "leader since …" or
// "standby; active on node-a since …".
func haLine(h *apitype.HAStatus, now time.Time) string {
	since := func() string {
		if h.LeaderSince.IsZero() {
			return ""
		}
		return " since " + h.LeaderSince.UTC().Format(time.RFC3339) + " (" + ago(now, h.LeaderSince) + ")"
	}
	switch {
	case h.Role == apitype.HALeader:
		return h.Identity + " is the active agent" + since()
	case h.Leader != "" && h.Leader != h.Identity:
		return h.Identity + " is a " + h.Role + "; active on " + h.Leader + since()
	}
	return h.Identity + " is a " + h.Role + "; no agent is active yet"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// renderStatus is the human view. Sections appear in the order an operator
// debugs: is it ready, is the link up, can it reach Kubernetes, then traffic.
func renderStatus(e *env, st *apitype.StatusResponse, now time.Time) {
	w := e.stdout
	ready := "ready"
	if !st.Ready {
		ready = "NOT READY: " + strings.Join(st.NotReady, "; ")
	}
	fmt.Fprintf(w, "Agent:       %s (%s), version %s\n", st.AgentID, st.ClusterName, st.Version)
	fmt.Fprintf(w, "State:       %s\n", ready)
	fmt.Fprintf(w, "Cluster ID:  %s\n", orDash(st.ClusterID))
	l := st.Link
	fmt.Fprintf(w, "Link:        %s", l.State)
	if l.Mode != "" {
		fmt.Fprintf(w, " via %s", l.Mode)
	}
	if !l.ConnectedSince.IsZero() && l.State == apitype.LinkConnected {
		fmt.Fprintf(w, ", since %s", ago(now, l.ConnectedSince))
	}
	fmt.Fprintf(w, "\n             last heartbeat %s, %d reconnects\n", ago(now, l.LastHeartbeat), l.Reconnects)
	if l.LastError != "" {
		fmt.Fprintf(w, "             last error: %s (%s)\n", l.LastError, ago(now, l.LastErrorAt))
	}
	if h := st.HA; h != nil {
		fmt.Fprintf(w, "HA:          %s\n", haLine(h, now))
	}
	k := st.Kubernetes
	if k.Reachable {
		fmt.Fprintf(w, "Kubernetes:  %s at %s, %d nodes, %d pods", k.Version, orDash(k.Server), k.Nodes, k.Pods)
		if k.CPUUsage != "" && k.CPUSource == k.MemorySource {
			fmt.Fprintf(w, ", cpu %s, memory %s (%s)", k.CPUUsage, k.MemoryUsage, k.CPUSource)
		} else if k.CPUUsage != "" {
			fmt.Fprintf(w, ", cpu %s (%s), memory %s (%s)", k.CPUUsage, k.CPUSource, k.MemoryUsage, k.MemorySource)
		}
		fmt.Fprintln(w)
	} else {
		fmt.Fprintf(w, "Kubernetes:  unreachable: %s\n", orDash(k.LastError))
	}
	p := st.Proxy
	fmt.Fprintf(w, "Proxy:       %d in flight, %d requests, %d errors\n", p.InFlight, p.Requests, p.Errors)
	t := st.Tunnel
	names := make([]string, 0, len(t.Forwards))
	for _, f := range t.Forwards {
		names = append(names, f.Name+"→"+f.LocalAddr)
	}
	active := "inactive"
	if t.Active {
		active = "active"
	}
	fmt.Fprintf(w, "Tunnel:      %s, %d active streams; forwards: %s\n", active, t.ActiveStreams, orDash(strings.Join(names, ", ")))
	r := st.Routes
	if r.Enabled {
		fmt.Fprintf(w, "Routes:      %d managed, mode %s, last sync %s", r.Count, orDash(r.RoutingMode), ago(now, r.LastSync))
		if r.LastSyncResult != "" {
			fmt.Fprintf(w, " (%s)", r.LastSyncResult)
		}
		fmt.Fprintln(w)
	} else {
		fmt.Fprintln(w, "Routes:      disabled")
	}
	m := st.Monitoring
	if !m.Enabled {
		fmt.Fprintln(w, "Monitoring:  disabled")
	} else {
		fmt.Fprintf(w, "Monitoring:  %d components\n", len(m.Releases))
		for _, rel := range m.Releases {
			line := fmt.Sprintf("             %-16s %s", rel.Component, rel.State)
			if rel.Reason != "" {
				line += ": " + rel.Reason
			}
			fmt.Fprintln(w, line)
		}
	}
}
