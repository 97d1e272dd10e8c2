package protocol

// Message types (protocol.md §4, §5).
const (
	// Agent → control plane.
	TypeRegister            = "register"
	TypeHeartbeat           = "heartbeat"
	TypeProxyResponse       = "proxy_response"
	TypeProxyResponseHeader = "proxy_response_header"
	TypeProxyResponseChunk  = "proxy_response_chunk"
	TypeProxyResponseEnd    = "proxy_response_end"
	TypeProxyResponseAbort  = "proxy_response_abort"
	TypeProxyError          = "proxy_error"
	TypeGatewayHelloAck     = "gateway_hello_ack"
	TypeProtocolFallback    = "protocol_fallback"
	TypeBackpressure        = "backpressure"
	TypeTCPTunnelData       = "tcp_tunnel_data"
	TypeTCPTunnelClose      = "tcp_tunnel_close"
	TypeUDPTunnelData       = "udp_tunnel_data"

	// Both directions.
	TypePing                = "ping"
	TypePong                = "pong"
	TypeProxyWebSocketData  = "proxy_websocket_data"
	TypeProxyWebSocketClose = "proxy_websocket_close"

	// Control plane → agent.
	TypeRegisterSuccess       = "register_success"
	TypeRegisterInProgress    = "register_in_progress"
	TypeHeartbeatAck          = "heartbeat_ack"
	TypeGatewayHello          = "gateway_hello"
	TypeProxyRequest          = "proxy_request"
	TypeProxyRequestChunk     = "proxy_request_chunk"
	TypeProxyRequestStreamEnd = "proxy_request_stream_end"
	TypeProxyCancel           = "proxy_cancel"
	TypeProxyStreamData       = "proxy_stream_data"
	TypeProxyWebSocketStart   = "proxy_websocket_start"
	TypeWSStart               = "ws_start"
	TypeWSData                = "ws_data"
	TypeWSClose               = "ws_close"
	TypeTCPTunnelStart        = "tcp_tunnel_start"
	TypeError                 = "error"
)
