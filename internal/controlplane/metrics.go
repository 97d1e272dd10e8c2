package controlplane

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
)

// metrics are the link's pipeops_agent_controlplane_* series.
type metrics struct {
	state         *prometheus.GaugeVec
	reconnects    prometheus.Counter
	registrations prometheus.Counter
	hbSent        prometheus.Counter
	hbFailed      prometheus.Counter
	malformed     prometheus.Counter
	unknown       prometheus.Counter
	panics        prometheus.Counter
	bytes         *prometheus.CounterVec
}

var linkStates = []string{apitype.LinkConnecting, apitype.LinkConnected, apitype.LinkReconnecting, apitype.LinkDisconnected}

func newMetrics(reg prometheus.Registerer) *metrics {
	const ns, sub = "pipeops_agent", "controlplane"
	m := &metrics{
		state: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "connection_state",
			Help: "1 for the control-plane link's current state (connecting, connected, reconnecting, disconnected), else 0."}, []string{"state"}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "reconnects_total",
			Help: "Reconnect attempts after a lost or failed control-plane connection."}),
		registrations: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "registrations_total",
			Help: "Successful register exchanges with the controller."}),
		hbSent: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "heartbeats_sent_total",
			Help: "Heartbeats written to the control plane."}),
		hbFailed: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "heartbeats_failed_total",
			Help: "Heartbeats that could not be sent (each one starts a reconnect)."}),
		malformed: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "malformed_messages_total",
			Help: "Inbound control-plane messages that were not valid JSON envelopes."}),
		unknown: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "unknown_messages_total",
			Help: "Inbound messages of a type no handler serves."}),
		panics: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "handler_panics_total",
			Help: "Message handlers that panicked (recovered)."}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "message_bytes_total",
			Help: "WebSocket message payload bytes by direction (in, out); control frames excluded."}, []string{"direction"}),
	}
	if reg != nil {
		reg.MustRegister(m.state, m.reconnects, m.registrations, m.hbSent, m.hbFailed, m.malformed, m.unknown, m.panics, m.bytes)
	}
	return m
}

func (m *metrics) setState(s string) {
	for _, v := range linkStates {
		x := 0.0
		if v == s {
			x = 1
		}
		m.state.WithLabelValues(v).Set(x)
	}
}
