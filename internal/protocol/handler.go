package protocol

// The seam between the control-plane connection and the handlers that ride
// on it (the Kubernetes proxy, the yamux tunnel, route sync): what a handler
// sees of one connection generation (Conn), how it serves inbound messages
// (Handler) and how it hears of a new connection (ConnectHook).
// internal/controlplane implements Conn; the handlers import this package,
// never controlplane, and controlplane imports none of them. The daemon
// wires the two together.

import "context"

// Conn is one connection generation, as handlers see it. Every method is
// safe for concurrent use. Once the connection ends, Context is cancelled and
// sends fail; a handler must never act on a newer connection through an old Conn.
type Conn interface {
	// Send writes one JSON envelope through the connection's single writer.
	Send(ctx context.Context, typ, requestID string, payload any) error
	// SendBinary writes one binary frame through the same writer.
	SendBinary(ctx context.Context, data []byte) error
	// Generation numbers connections; it only grows.
	Generation() uint64
	// Context is cancelled when this connection ends.
	Context() context.Context
	// ExpectBinaryBody reserves the next binary frame carrying requestID
	// (legacy body_binary, §6.2). The channel receives the body (without the
	// id prefix) once; cancel releases the reservation.
	ExpectBinaryBody(requestID string) (body <-chan []byte, cancel func())
	// StartBinaryChannel hands every later binary frame of this connection to
	// sink, in order (yamux, §7). It may be called once per connection.
	StartBinaryChannel(sink func([]byte))
	// BinaryChannelActive reports whether StartBinaryChannel was called.
	BinaryChannelActive() bool
}

// Message is one envelope of a SendBatch.
type Message struct {
	Type, RequestID string
	Payload         any
}

// BatchSender is a Conn that can queue several envelopes at once: they go
// out back to back, as separate messages, usually in one socket write. A
// handler with a whole small answer at hand (a streamed response's header,
// its only chunk and its end) uses it when the Conn has it, and Send for
// each message otherwise.
type BatchSender interface {
	SendBatch(ctx context.Context, msgs ...Message) error
}

// BinaryReleaser is a Conn whose binary frames may come in reusable
// buffers: a sink that is done with a frame's bytes hands the frame back
// with ReleaseBinary (and must not touch it afterwards). A sink that never
// does leaves them to the garbage collector.
type BinaryReleaser interface {
	ReleaseBinary(data []byte)
}

// Handler serves the inbound message types it lists. Handle runs on the
// connection's reader goroutine: it must return quickly (start a goroutine
// for long work) and must not panic; the dispatcher recovers and logs if it does.
type Handler interface {
	Types() []string
	Handle(c Conn, env *Envelope)
}

// ConnectHook runs after every successful (re)connection, in its own
// goroutine, e.g. the full ingress route sync (protocol.md §8.4).
type ConnectHook func(ctx context.Context, c Conn)
