// Package overhttp speaks the WebSocket-over-HTTP protocol of Pushpin
// (https://pushpin.org/docs/protocols/websocket-over-http/) from the
// gateway's side: the client's WebSocket events go to a plain HTTP backend
// as POST requests of Content-Type application/websocket-events, and the
// events in each response come back to the client.
//
// What is implemented, by the spec's sections:
//   - Events: OPEN, TEXT, BINARY, PING, PONG, CLOSE, DISCONNECT, in the
//     chunked-like encoding ("TYPE hexlen\r\ncontent\r\n" or "TYPE\r\n").
//   - Headers: Connection-Id on every request; Meta-* request headers set
//     by the backend's Set-Meta-* response headers (a client's own Meta-*
//     and Connection-Id are never forwarded); Keep-Alive-Interval.
//   - The OPEN exchange: a non-200 answer refuses the connection with its
//     status and body; the first event of a 200 answer must be OPEN.
//   - GRIP over WebSocket-over-HTTP (https://pushpin.org/docs/protocols/grip/):
//     an OPEN answer with "Sec-WebSocket-Extensions: grip" turns on control
//     messages ("c:" + JSON: subscribe, unsubscribe) and the message prefix
//     (default "m:", or the extension's message-prefix parameter).
//
// Not implemented: Content-Bytes-Accepted (partial acceptance; every event
// sent counts as accepted) and Content-Bytes-Replayed, and the GRIP
// control types detach and keep-alive (ignored).
package overhttp

import (
	"errors"
	"fmt"
	"strconv"
)

// ContentType is the media type of requests and responses.
const ContentType = "application/websocket-events"

// Type is an event's name.
type Type string

// The event types of the protocol.
const (
	Open       Type = "OPEN"
	Text       Type = "TEXT"
	Binary     Type = "BINARY"
	Ping       Type = "PING"
	Pong       Type = "PONG"
	Close      Type = "CLOSE"
	Disconnect Type = "DISCONNECT"
)

// Event is one WebSocket event. Content is nil for an event without a
// content block ("OPEN\r\n"), and non-nil, possibly empty, for one with
// ("TEXT 0\r\n\r\n").
type Event struct {
	Type    Type
	Content []byte
}

// Append encodes e at the end of dst.
func Append(dst []byte, e Event) []byte {
	dst = append(dst, e.Type...)
	if e.Content != nil {
		dst = append(dst, ' ')
		start := len(dst)
		dst = strconv.AppendInt(dst, int64(len(e.Content)), 16)
		for i := start; i < len(dst); i++ {
			if 'a' <= dst[i] && dst[i] <= 'f' {
				dst[i] -= 'a' - 'A' // upper case, as the spec writes it ("TEXT B")
			}
		}
		dst = append(dst, "\r\n"...)
		dst = append(dst, e.Content...)
	}
	return append(dst, "\r\n"...)
}

// ErrTooBig is returned by Decode for an event whose content exceeds the
// limit it was given.
var ErrTooBig = errors.New("event content too big")

// Decode parses a body of events. Content slices alias body. Event types
// other than the protocol's are returned as they are, for the caller to
// ignore or refuse; maxContent bounds each event's content (0: no bound).
func Decode(body []byte, maxContent int) ([]Event, error) {
	var out []Event
	for pos := 0; pos < len(body); {
		line, rest, ok := cutCRLF(body[pos:])
		if !ok {
			return nil, fmt.Errorf("event at byte %d: no CRLF after the event line", pos)
		}
		at := pos
		pos += len(line) + 2
		typ, size, hasSize := cutSpace(line)
		if len(typ) == 0 || !isToken(typ) {
			return nil, fmt.Errorf("event at byte %d: bad event name %q", at, clip(line))
		}
		e := Event{Type: Type(typ)}
		if hasSize {
			n, err := strconv.ParseUint(string(size), 16, 31)
			if err != nil || len(size) == 0 {
				return nil, fmt.Errorf("event %s at byte %d: bad content size %q", typ, at, clip(size))
			}
			if maxContent > 0 && n > uint64(maxContent) {
				return nil, fmt.Errorf("event %s at byte %d: %w (%d bytes, limit %d)", typ, at, ErrTooBig, n, maxContent)
			}
			if uint64(len(rest)) < n+2 {
				return nil, fmt.Errorf("event %s at byte %d: content of %d bytes is cut short", typ, at, n)
			}
			if rest[n] != '\r' || rest[n+1] != '\n' {
				return nil, fmt.Errorf("event %s at byte %d: no CRLF after its %d bytes of content", typ, at, n)
			}
			e.Content = rest[:n:n]
			pos += int(n) + 2
		}
		out = append(out, e)
	}
	return out, nil
}

func cutCRLF(b []byte) (line, rest []byte, ok bool) {
	for i := 0; i+1 < len(b); i++ {
		if b[i] == '\r' && b[i+1] == '\n' {
			return b[:i], b[i+2:], true
		}
	}
	return nil, nil, false
}

func cutSpace(b []byte) (before, after []byte, found bool) {
	for i, c := range b {
		if c == ' ' {
			return b[:i], b[i+1:], true
		}
	}
	return b, nil, false
}

// isToken accepts the characters of an event name: upper-case letters,
// digits, '-' and '_'.
func isToken(b []byte) bool {
	for _, c := range b {
		if !('A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

func clip(b []byte) string {
	if len(b) > 32 {
		return string(b[:32]) + "…"
	}
	return string(b)
}

// CloseContent is the content of a CLOSE event: the code, big-endian, then
// the reason.
func CloseContent(code uint16, reason string) []byte {
	b := make([]byte, 2, 2+len(reason))
	b[0], b[1] = byte(code>>8), byte(code)
	return append(b, reason...)
}

// ParseClose reads a CLOSE event's content; ok is false when it has no code.
func ParseClose(p []byte) (code uint16, reason string, ok bool) {
	if len(p) < 2 {
		return 0, "", false
	}
	return uint16(p[0])<<8 | uint16(p[1]), string(p[2:]), true
}
