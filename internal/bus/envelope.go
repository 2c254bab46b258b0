package bus

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Message is what one instance hands the others: a message for clients
// (Text or Binary), or a Close for them with Code and Reason.
type Message struct {
	Kind   Kind
	Code   uint16 // Close only
	Reason string // Close only
	// Payload is the message (Text, Binary).
	Payload []byte
}

// Kind is what a Message asks of the connections it reaches.
type Kind byte

// The kinds; the values are those of the WebSocket opcodes.
const (
	Text   Kind = 1
	Binary Kind = 2
	Close  Kind = 8
)

// version is the envelope's first byte: instances of different versions
// can then tell a message they cannot read from a broken one.
const version = 1

// Encode writes m as the bytes carried by the broker:
//
//	version (1) | kind (1) | Text, Binary: payload
//	                       | Close: code (2, big endian) | reason
func (m Message) Encode() []byte {
	switch m.Kind {
	case Close:
		b := make([]byte, 4, 4+len(m.Reason))
		b[0], b[1] = version, byte(Close)
		binary.BigEndian.PutUint16(b[2:], m.Code)
		return append(b, m.Reason...)
	default:
		b := make([]byte, 2, 2+len(m.Payload))
		b[0], b[1] = version, byte(m.Kind)
		return append(b, m.Payload...)
	}
}

// Decode reads what Encode wrote. The payload aliases b.
func Decode(b []byte) (Message, error) {
	if len(b) < 2 {
		return Message{}, errors.New("bus message: shorter than its header")
	}
	if b[0] != version {
		return Message{}, fmt.Errorf("bus message: version %d, want %d (instances of different versions share the bus)", b[0], version)
	}
	m := Message{Kind: Kind(b[1])}
	switch m.Kind {
	case Text, Binary:
		m.Payload = b[2:]
	case Close:
		if len(b) < 4 {
			return Message{}, errors.New("bus message: Close without a code")
		}
		m.Code = binary.BigEndian.Uint16(b[2:])
		m.Reason = string(b[4:])
	default:
		return Message{}, fmt.Errorf("bus message: unknown kind %d", b[1])
	}
	return m, nil
}
