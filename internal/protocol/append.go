package protocol

import (
	"encoding/json"
	"slices"
)

// AppendString appends s as a JSON string, byte for byte as encoding/json
// writes it (HTML characters escaped too). Plain ASCII, the common case
// for types, ids and header values, is copied as it is.
func AppendString(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			b, _ := json.Marshal(s) // strings always marshal
			return append(dst, b...)
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}

// AppendHeaders appends h as a JSON object of string lists, keys sorted:
// the bytes encoding/json writes for a map[string][]string, without its
// reflection and per-key allocations.
func AppendHeaders(dst []byte, h map[string][]string) []byte {
	if h == nil {
		return append(dst, "null"...)
	}
	var stack [32]string
	keys := stack[:0]
	for k := range h {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	dst = append(dst, '{')
	for i, k := range keys {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(AppendString(dst, k), ':')
		vs := h[k]
		if vs == nil {
			dst = append(dst, "null"...)
			continue
		}
		dst = append(dst, '[')
		for j, v := range vs {
			if j > 0 {
				dst = append(dst, ',')
			}
			dst = AppendString(dst, v)
		}
		dst = append(dst, ']')
	}
	return append(dst, '}')
}

// HeadersSize bounds what AppendHeaders writes for h.
func HeadersSize(h map[string][]string) int {
	n := 4
	for k, vs := range h {
		n += StringSize(k) + 3
		for _, v := range vs {
			n += StringSize(v) + 1
		}
	}
	return n
}

// StringSize bounds what AppendString writes for s: its quotes, and at most
// six bytes (\u00XX, \ufffd, \u2028) for each byte that is not plain.
func StringSize(s string) int {
	n := len(s) + 2
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			n += 5
		}
	}
	return n
}
