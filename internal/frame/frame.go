// Package frame holds the small RFC 6455 primitives the gateway is built on:
// frame headers that are parsed from and encoded into caller-supplied bytes,
// in-place masking, and Close frame payloads.
//
// Nothing here reads from a connection or allocates on the hot path; the
// relays decide how bytes move and use these functions to find frame
// boundaries and to build the few frames the gateway sends itself (Ping,
// Close).
package frame

import (
	"encoding/binary"
	"errors"
	"math/bits"
	"math/rand/v2"
)

// Opcode is the 4-bit frame type (RFC 6455 §5.2).
type Opcode byte

// The opcodes RFC 6455 defines. Values 0x3–0x7 and 0xB–0xF are reserved.
const (
	OpContinuation Opcode = 0x0
	OpText         Opcode = 0x1
	OpBinary       Opcode = 0x2
	OpClose        Opcode = 0x8
	OpPing         Opcode = 0x9
	OpPong         Opcode = 0xA
)

// IsControl reports whether o is a control opcode (Close, Ping, Pong or a
// reserved control value); control frames may interleave with the fragments
// of a data message.
func (o Opcode) IsControl() bool { return o&0x8 != 0 }

// IsReserved reports whether o is not defined by RFC 6455.
func (o Opcode) IsReserved() bool {
	switch o {
	case OpContinuation, OpText, OpBinary, OpClose, OpPing, OpPong:
		return false
	}
	return true
}

func (o Opcode) String() string {
	switch o {
	case OpContinuation:
		return "continuation"
	case OpText:
		return "text"
	case OpBinary:
		return "binary"
	case OpClose:
		return "close"
	case OpPing:
		return "ping"
	case OpPong:
		return "pong"
	}
	return "reserved"
}

// MaxHeaderSize is the longest possible frame header: 2 bytes, an 8-byte
// extended length and a 4-byte masking key.
const MaxHeaderSize = 14

// MaxControlPayload is the largest payload a control frame may carry.
const MaxControlPayload = 125

// Rsv bits as they sit in Header.Rsv.
const (
	Rsv1 byte = 0x4 // permessage-deflate's "compressed" bit
	Rsv2 byte = 0x2
	Rsv3 byte = 0x1
)

// Header is a decoded frame header.
type Header struct {
	Fin    bool
	Rsv    byte // RSV1<<2 | RSV2<<1 | RSV3
	Op     Opcode
	Masked bool
	Mask   [4]byte
	Length int64 // payload length
}

// ErrLengthOverflow reports a 64-bit payload length with the top bit set,
// which RFC 6455 §5.2 forbids.
var ErrLengthOverflow = errors.New("websocket: frame length has the most significant bit set")

// HeaderSize returns the size of the header that starts with the bytes b0 and
// b1, so a reader knows how many bytes to collect before calling ParseHeader.
func HeaderSize(b0, b1 byte) int {
	_ = b0
	n := 2
	switch b1 & 0x7f {
	case 126:
		n += 2
	case 127:
		n += 8
	}
	if b1&0x80 != 0 {
		n += 4
	}
	return n
}

// ParseHeader decodes the header at the start of b. It returns the header
// and its size, or n == 0 when b does not yet hold the whole header.
func ParseHeader(b []byte) (h Header, n int, err error) {
	if len(b) < 2 {
		return h, 0, nil
	}
	n = HeaderSize(b[0], b[1])
	if len(b) < n {
		return h, 0, nil
	}
	h.Fin = b[0]&0x80 != 0
	h.Rsv = (b[0] >> 4) & 0x7
	h.Op = Opcode(b[0] & 0xf)
	h.Masked = b[1]&0x80 != 0
	p := 2
	switch l := b[1] & 0x7f; l {
	case 126:
		h.Length = int64(binary.BigEndian.Uint16(b[2:4]))
		p = 4
	case 127:
		u := binary.BigEndian.Uint64(b[2:10])
		if u>>63 != 0 {
			return h, n, ErrLengthOverflow
		}
		h.Length = int64(u)
		p = 10
	default:
		h.Length = int64(l)
	}
	if h.Masked {
		copy(h.Mask[:], b[p:p+4])
	}
	return h, n, nil
}

// Size returns the encoded size of h.
func (h Header) Size() int {
	n := 2
	switch {
	case h.Length > 0xffff:
		n += 8
	case h.Length > 125:
		n += 2
	}
	if h.Masked {
		n += 4
	}
	return n
}

// PutHeader encodes h into b, which must hold h.Size() bytes, using the
// minimal length encoding, and returns the number of bytes written.
func PutHeader(b []byte, h Header) int {
	b0 := byte(h.Op&0xf) | (h.Rsv&0x7)<<4
	if h.Fin {
		b0 |= 0x80
	}
	b[0] = b0
	var mbit byte
	if h.Masked {
		mbit = 0x80
	}
	p := 2
	switch {
	case h.Length > 0xffff:
		b[1] = mbit | 127
		binary.BigEndian.PutUint64(b[2:10], uint64(h.Length))
		p = 10
	case h.Length > 125:
		b[1] = mbit | 126
		binary.BigEndian.PutUint16(b[2:4], uint16(h.Length))
		p = 4
	default:
		b[1] = mbit | byte(h.Length)
	}
	if h.Masked {
		copy(b[p:p+4], h.Mask[:])
		p += 4
	}
	return p
}

// NewKey returns a masking key for a frame from a client: random, as RFC
// 6455 §5.3 requires (an intermediary must not be able to predict it), or
// the zero key for an unmasked frame.
func NewKey(masked bool) [4]byte {
	var k [4]byte
	if masked {
		binary.LittleEndian.PutUint32(k[:], rand.Uint32())
	}
	return k
}

// Mask XORs b in place with key, as if b started at payload offset pos, and
// returns the offset after b, so a payload that arrives in pieces can be
// (un)masked piece by piece.
func Mask(key [4]byte, pos int, b []byte) int {
	if len(b) == 0 {
		return pos
	}
	k := binary.LittleEndian.Uint32(key[:])
	k = bits.RotateLeft32(k, -8*(pos&3))
	i := 0
	// Word at a time: the key rotated to the current offset repeats every
	// four bytes, so eight bytes take one 64-bit XOR.
	k64 := uint64(k) | uint64(k)<<32
	for ; i+8 <= len(b); i += 8 {
		v := binary.LittleEndian.Uint64(b[i:])
		binary.LittleEndian.PutUint64(b[i:], v^k64)
	}
	for ; i < len(b); i++ {
		b[i] ^= byte(k >> (8 * (i & 3)))
	}
	return pos + len(b)
}
