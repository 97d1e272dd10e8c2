package dashboard

import (
	"context"
	"encoding/json"
	"net/url"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/logging"
)

// How much history the page gets with each snapshot.
const (
	seriesLen  = 60
	historyLen = 20
)

// Snapshot is the data of a `status` event and of GET /api/status: the
// agent's status (the same fields as the local API's /v1/status) plus what
// the page derives from consecutive samples, computed once on the server.
type Snapshot struct {
	apitype.StatusResponse
	ServerTime  time.Time    `json:"server_time"`
	Rates       Rates        `json:"rates"`
	Series      Series       `json:"series"`
	LinkHistory []LinkChange `json:"link_history"`
}

// Rates are per-second rates between the last two samples.
type Rates struct {
	ProxyRPS    float64 `json:"proxy_rps"`
	ProxyErrors float64 `json:"proxy_errors_per_s"`
	// BytesPerSec is proxy plus tunnel traffic, both directions.
	BytesPerSec float64 `json:"bytes_per_s"`
}

// Series are the recent rates for the sparklines, oldest first.
type Series struct {
	RPS   []float64 `json:"rps"`
	Bytes []float64 `json:"bytes"`
}

// LinkChange is one control-plane link state transition seen by the dashboard.
type LinkChange struct {
	At    time.Time `json:"at"`
	State string    `json:"state"`
	Error string    `json:"error,omitempty"`
}

// sampler turns successive StatusResponses into Snapshots. It is used by the
// producer goroutine only (and by /api/status under Server.produceMu).
type sampler struct {
	prev     *apitype.StatusResponse
	prevAt   time.Time
	rates    Rates
	rps      []float64
	bytes    []float64
	history  []LinkChange
	lastLink string
}

func (s *sampler) sample(st apitype.StatusResponse, now time.Time) Snapshot {
	if p := s.prev; p != nil {
		if dt := now.Sub(s.prevAt).Seconds(); dt > 0.05 {
			s.rates = Rates{
				ProxyRPS:    rate(st.Proxy.Requests, p.Proxy.Requests, dt),
				ProxyErrors: rate(st.Proxy.Errors, p.Proxy.Errors, dt),
				BytesPerSec: rate(trafficBytes(st), trafficBytes(*p), dt),
			}
			s.rps = push(s.rps, s.rates.ProxyRPS)
			s.bytes = push(s.bytes, s.rates.BytesPerSec)
			s.prev, s.prevAt = &st, now
		}
	} else {
		s.prev, s.prevAt = &st, now
	}
	if st.Link.State != s.lastLink {
		s.lastLink = st.Link.State
		s.history = append(s.history, LinkChange{At: now, State: st.Link.State, Error: st.Link.LastError})
		if len(s.history) > historyLen {
			s.history = s.history[len(s.history)-historyLen:]
		}
	}
	return Snapshot{StatusResponse: st, ServerTime: now, Rates: s.rates,
		Series:      Series{RPS: clone(s.rps), Bytes: clone(s.bytes)},
		LinkHistory: append([]LinkChange{}, s.history...)}
}

// redactURL drops user info and the query string from an endpoint: the
// page needs where the agent connects, and a URL is where a credential
// would most likely hide.
func redactURL(raw string) string {
	if raw == "" {
		return raw
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	u.User, u.RawQuery, u.ForceQuery, u.Fragment = nil, "", false, ""
	return u.String()
}

func trafficBytes(st apitype.StatusResponse) int64 {
	return st.Proxy.BytesIn + st.Proxy.BytesOut + st.Tunnel.BytesIn + st.Tunnel.BytesOut
}

// rate is the per-second increase of a counter; a reset counts as zero.
func rate(cur, prev int64, dt float64) float64 {
	if cur < prev {
		return 0
	}
	return float64(cur-prev) / dt
}

func push(s []float64, v float64) []float64 {
	s = append(s, v)
	if len(s) > seriesLen {
		s = s[len(s)-seriesLen:]
	}
	return s
}

func clone(s []float64) []float64 { return append([]float64{}, s...) }

// produce takes one snapshot, encodes it once and publishes it to every viewer.
func (s *Server) produce(ctx context.Context) *Event {
	s.produceMu.Lock()
	defer s.produceMu.Unlock()
	sctx, cancel := context.WithTimeout(ctx, s.o.SnapshotTimeout)
	st := s.o.Snapshot(sctx)
	cancel()
	now := s.o.Now()
	st.Link.URL = redactURL(st.Link.URL)
	st.Kubernetes.Server = redactURL(st.Kubernetes.Server)
	snap := s.sampler.sample(st, now)
	data, err := json.Marshal(snap)
	if err != nil { // cannot happen with these types; keep the last good snapshot
		s.o.Log.Warn("encode dashboard snapshot", logging.KeyErr, err)
		return s.hub.latest()
	}
	s.lastProduced = now
	if s.metrics != nil {
		s.metrics.snapshots.Inc()
	}
	return s.hub.publish(EventStatus, data, now)
}

// ingestLogs publishes the log lines added since the last call.
func (s *Server) ingestLogs() {
	if s.logs == nil {
		return
	}
	lines, newest := s.logs.Since(s.logSeq)
	s.logSeq = newest
	// A burst larger than half a viewer's queue would drop healthy viewers:
	// keep its newest lines (the full log is in the journal).
	if max := s.o.ViewerBuffer / 2; len(lines) > max {
		lines = lines[len(lines)-max:]
	}
	for _, l := range lines {
		data, err := json.Marshal(l)
		if err != nil {
			continue
		}
		s.hub.publish(EventLog, data, s.o.Now())
	}
}

// Run is the one shared snapshot producer: every Interval while anyone
// watches (every IdleInterval otherwise, to keep the link history), at once
// when health changes or a viewer connects, and log lines as they arrive.
// It blocks until ctx ends, then closes every viewer's stream and returns nil.
func (s *Server) Run(ctx context.Context) error {
	defer s.hub.close()
	t := time.NewTicker(s.o.Interval)
	defer t.Stop()
	var changed <-chan struct{}
	var logsChanged <-chan struct{}
	s.produce(ctx)
	for {
		if changed == nil && s.o.Changed != nil {
			changed = s.o.Changed()
		}
		if s.logs != nil {
			logsChanged = s.logs.Changed()
			s.ingestLogs()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if s.hub.count() > 0 || s.o.Now().Sub(s.lastProducedAt()) >= s.o.IdleInterval {
				s.produce(ctx)
			}
		case <-changed:
			changed = nil // ask again only after it fired: each call registers a waiter
			s.produce(ctx)
		case <-s.hub.kick:
			s.produce(ctx)
		case <-logsChanged:
		}
	}
}

func (s *Server) lastProducedAt() time.Time {
	s.produceMu.Lock()
	defer s.produceMu.Unlock()
	return s.lastProduced
}
