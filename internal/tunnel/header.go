package tunnel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"
)

// Stream header fields (protocol.md §7.2).
const (
	HeaderVersion = 1
	ProtoTCP      = 1
	ProtoUDP      = 2

	// Bounds on the variable fields. A Service name is a DNS-1035 label
	// (≤ 63) but forward names and ExternalName-style names may be longer,
	// so names get the DNS name limit; namespaces are DNS-1123 labels.
	maxNameLen = 253
	maxNSLen   = 63
	maxIDLen   = 256
)

// ErrBadHeader marks a stream header that cannot be used. It is counted as
// a header_error.
var ErrBadHeader = errors.New("bad stream header")

// Header is the stream header the gateway writes at the start of every stream.
type Header struct {
	Version   uint8
	Protocol  uint8
	Port      uint16
	Name      string
	Namespace string
	TunnelID  string
}

// Anomaly describes a header the reference would accept silently but that
// the agent logs: an unknown version, or an unknown protocol (treated as
// TCP). "" when the header is ordinary.
func (h Header) Anomaly() string {
	switch {
	case h.Version != HeaderVersion:
		return fmt.Sprintf("stream header version %d (want %d)", h.Version, HeaderVersion)
	case h.Protocol != ProtoTCP && h.Protocol != ProtoUDP:
		return fmt.Sprintf("unknown stream protocol %d, treated as TCP", h.Protocol)
	}
	return ""
}

// IsUDP reports whether the payload is UDP datagrams.
func (h Header) IsUDP() bool { return h.Protocol == ProtoUDP }

// MarshalBinary encodes h (used by the gateway side and tests).
func (h Header) MarshalBinary() ([]byte, error) {
	if len(h.Name) > maxNameLen || len(h.Namespace) > maxNSLen || len(h.TunnelID) > maxIDLen {
		return nil, fmt.Errorf("%w: field too long", ErrBadHeader)
	}
	b := make([]byte, 0, 10+len(h.Name)+len(h.Namespace)+len(h.TunnelID))
	b = append(b, h.Version, h.Protocol)
	b = binary.BigEndian.AppendUint16(b, h.Port)
	for _, s := range []string{h.Name, h.Namespace, h.TunnelID} {
		b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
		b = append(b, s...)
	}
	return b, nil
}

// ReadHeader reads one header from r. It reads exactly the header's bytes,
// so the payload that follows stays in r. Lengths are bounded before any
// allocation; names must be valid UTF-8. Every failure wraps ErrBadHeader.
func ReadHeader(r io.Reader) (Header, error) {
	var fixed [6]byte
	if _, err := io.ReadFull(r, fixed[:]); err != nil {
		return Header{}, fmt.Errorf("%w: %w", ErrBadHeader, err)
	}
	h := Header{Version: fixed[0], Protocol: fixed[1], Port: binary.BigEndian.Uint16(fixed[2:4])}
	var err error
	nameLen := int(binary.BigEndian.Uint16(fixed[4:6]))
	if h.Name, err = readField(r, "service_name", nameLen, maxNameLen, false); err != nil {
		return Header{}, err
	}
	if h.Namespace, err = readField(r, "service_namespace", -1, maxNSLen, false); err != nil {
		return Header{}, err
	}
	if h.TunnelID, err = readField(r, "tunnel_id", -1, maxIDLen, true); err != nil {
		return Header{}, err
	}
	return h, nil
}

// readField reads a u16 length (unless n ≥ 0 is given) and that many bytes.
func readField(r io.Reader, what string, n, limit int, opaque bool) (string, error) {
	if n < 0 {
		var l [2]byte
		if _, err := io.ReadFull(r, l[:]); err != nil {
			return "", fmt.Errorf("%w: %s length: %w", ErrBadHeader, what, err)
		}
		n = int(binary.BigEndian.Uint16(l[:]))
	}
	if n > limit {
		return "", fmt.Errorf("%w: %s is %d bytes (limit %d)", ErrBadHeader, what, n, limit)
	}
	if n == 0 {
		return "", nil
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return "", fmt.Errorf("%w: %s: %w", ErrBadHeader, what, err)
	}
	if !opaque && !utf8.Valid(b) {
		return "", fmt.Errorf("%w: %s is not UTF-8", ErrBadHeader, what)
	}
	return string(b), nil
}
