package frame

import (
	"encoding/binary"
	"unicode/utf8"
)

// StatusCode is the status code of a Close frame (RFC 6455 §7.4).
type StatusCode int

// Close status codes (RFC 6455 §7.4.1 and the IANA registry) that the
// gateway sends or reports.
const (
	CloseNormal          StatusCode = 1000
	CloseGoingAway       StatusCode = 1001
	CloseProtocolError   StatusCode = 1002
	CloseUnsupported     StatusCode = 1003
	CloseNoStatus        StatusCode = 1005 // never sent: "the Close frame had no code"
	CloseAbnormal        StatusCode = 1006 // never sent: "the TCP connection ended without a Close frame"
	CloseInvalidPayload  StatusCode = 1007
	ClosePolicyViolation StatusCode = 1008
	CloseTooBig          StatusCode = 1009
	CloseMandatoryExt    StatusCode = 1010
	CloseInternalError   StatusCode = 1011
	CloseServiceRestart  StatusCode = 1012
	CloseTryAgainLater   StatusCode = 1013
	CloseBadGateway      StatusCode = 1014
)

// MaxCloseReason is the longest reason that fits a Close frame beside its
// two-byte code.
const MaxCloseReason = MaxControlPayload - 2

// ValidCloseCode reports whether code may appear in a Close frame on the wire
// (RFC 6455 §7.4): 1000–1003, 1007–1014 and the registered/private ranges
// 3000–4999.
func ValidCloseCode(code StatusCode) bool {
	switch {
	case code >= 1000 && code <= 1003:
		return true
	case code >= 1007 && code <= 1014:
		return true
	case code >= 3000 && code <= 4999:
		return true
	}
	return false
}

// ParseClose decodes a Close frame's unmasked payload. A payload of zero
// bytes means no status (1005). ok is false when the payload is malformed
// (one byte long, an invalid code, or a reason that is not UTF-8).
func ParseClose(p []byte) (code StatusCode, reason string, ok bool) {
	switch len(p) {
	case 0:
		return CloseNoStatus, "", true
	case 1:
		return 0, "", false
	}
	code = StatusCode(binary.BigEndian.Uint16(p))
	reason = string(p[2:])
	return code, reason, ValidCloseCode(code) && utf8.ValidString(reason)
}

// AppendClose appends a complete Close frame with code and reason to dst. The
// reason is cut to MaxCloseReason bytes at a rune boundary. When masked, the
// payload is masked with key, as frames from a client must be.
func AppendClose(dst []byte, code StatusCode, reason string, masked bool, key [4]byte) []byte {
	if len(reason) > MaxCloseReason {
		cut := MaxCloseReason
		for cut > 0 && !utf8.RuneStart(reason[cut]) {
			cut--
		}
		reason = reason[:cut]
	}
	var p [MaxControlPayload]byte
	binary.BigEndian.PutUint16(p[:2], uint16(code))
	n := 2 + copy(p[2:], reason)
	return AppendFrame(dst, OpClose, p[:n], masked, key)
}

// AppendFrame appends a single unfragmented frame carrying payload to dst,
// masking a copy of the payload when masked is set.
func AppendFrame(dst []byte, op Opcode, payload []byte, masked bool, key [4]byte) []byte {
	h := Header{Fin: true, Op: op, Masked: masked, Mask: key, Length: int64(len(payload))}
	var hb [MaxHeaderSize]byte
	dst = append(dst, hb[:PutHeader(hb[:], h)]...)
	start := len(dst)
	dst = append(dst, payload...)
	if masked {
		Mask(key, 0, dst[start:])
	}
	return dst
}
