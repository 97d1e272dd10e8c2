package protocol

// GatewayHello is the payload of `gateway_hello` (§5.1, §7.1).
type GatewayHello struct {
	UseYamux    bool         `json:"use_yamux"`
	YamuxConfig *YamuxConfig `json:"yamux_config,omitempty"`
	// UDPFraming advertises that the gateway can carry UDP streams with
	// length-prefixed framing (UDPFramingLengthPrefixed). Absent on the
	// reference gateway; see docs/tunnel.md.
	UDPFraming string `json:"udp_framing,omitempty"`
}

// YamuxConfig is gateway_hello.yamux_config. Integers may arrive as floats.
type YamuxConfig struct {
	MaxStreamWindowSize      float64 `json:"max_stream_window_size,omitempty"`
	KeepAliveIntervalSeconds float64 `json:"keep_alive_interval_seconds,omitempty"`
	ConnectionTimeoutSeconds float64 `json:"connection_timeout_seconds,omitempty"`
}

// GatewayHelloAck is the payload of `gateway_hello_ack` (§7.1).
type GatewayHelloAck struct {
	UseYamux bool `json:"use_yamux"`
	// UDPFraming is set to UDPFramingLengthPrefixed when the hello advertised
	// it: from then on, every UDP stream of this session is framed.
	UDPFraming string `json:"udp_framing,omitempty"`
}

// UDPFramingLengthPrefixed frames each UDP datagram on a yamux stream as a
// 2-byte big-endian length followed by that many bytes.
const UDPFramingLengthPrefixed = "length_prefixed"
