package ha

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the pipeops_agent_ha_* series.
type metrics struct {
	transitions prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, e *Elector) *metrics {
	m := &metrics{transitions: prometheus.NewCounter(prometheus.CounterOpts{Name: "pipeops_agent_ha_leader_transitions_total",
		Help: "Times this agent became the leader or stopped being it."})}
	if reg == nil {
		return m
	}
	leader := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "pipeops_agent_ha_leader",
		Help: "1 while this agent is the leader (holds the lease and may act for the cluster), else 0."}, func() float64 {
		if e.Active() {
			return 1
		}
		return 0
	})
	total := prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "pipeops_agent_ha_leader_seconds_total",
		Help: "Seconds this agent has been the leader, the running term included."}, func() float64 {
		return e.leaderSeconds().Seconds()
	})
	reg.MustRegister(m.transitions, leader, total)
	return m
}

// leaderSeconds is the time this agent has led, the running term included.
func (e *Elector) leaderSeconds() time.Duration {
	e.mu.Lock()
	defer e.mu.Unlock()
	d := e.ledFor
	if !e.termFrom.IsZero() {
		d += time.Since(e.termFrom)
	}
	return d
}
