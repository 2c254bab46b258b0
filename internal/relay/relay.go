// Package relay is the core every mode shares: the two sides of a
// connection, what is counted about them, and the leg loop that reads one
// leg of any kind (TCP, TLS, an HTTP/2 or HTTP/3 stream), runs its
// idle-timeout policy (package liveness), parks it when it is quiet
// (package quiet) and closes it. A mode (package tunnel or terminate)
// supplies what to do with the bytes read and with the policy's events, as
// a Mode.
package relay

import (
	"time"

	"github.com/caddy-websocket/caddy-websocket/internal/frame"
	"github.com/caddy-websocket/caddy-websocket/internal/relay/liveness"
)

// Side names a leg of a connection.
type Side uint8

// The two legs.
const (
	Client Side = iota
	Backend
)

func (s Side) String() string {
	if s == Client {
		return "client"
	}
	return "backend"
}

// Other returns the opposite side.
func (s Side) Other() Side { return 1 - s }

// Role is what the gateway is on a leg's WebSocket.
type Role uint8

const (
	// ServerRole: the gateway answered the handshake (the client leg). Frames
	// arrive masked, the gateway's go out unmasked, and the gateway closes
	// the TCP connection first (RFC 6455 §7.1.1).
	ServerRole Role = iota
	// ClientRole: the gateway made the handshake (a backend leg). It masks
	// its frames and leaves the TCP close to the server.
	ClientRole
)

// RoleOf is the gateway's role on a side.
func RoleOf(s Side) Role {
	if s == Client {
		return ServerRole
	}
	return ClientRole
}

// Masks reports whether the gateway masks the frames it sends in this role.
func (r Role) Masks() bool { return r == ClientRole }

// PerSide holds one value for each side.
type PerSide[T any] struct {
	Client, Backend T
}

// Of returns the value of side s.
func (p *PerSide[T]) Of(s Side) *T {
	if s == Client {
		return &p.Client
	}
	return &p.Backend
}

// Ending is how a connection ended, in its first closer's account: what
// happens to the other leg afterwards follows from it and is not recorded.
type Ending struct {
	// Closer is who ended the connection: "client", "backend" or "gateway".
	Closer string
	// Code and Reason are from the first Close frame (from the closer, or
	// sent by the gateway); Code is 1006 when the closer vanished without
	// one.
	Code   frame.StatusCode
	Reason string
}

// Record keeps the first account of the end and ignores later ones. The
// mode guards e with its connection's lock.
func (e *Ending) Record(closer string, code frame.StatusCode, reason string) {
	if e.Closer == "" {
		e.Closer, e.Code, e.Reason = closer, code, reason
	}
}

// Recorded reports whether the end has been told.
func (e *Ending) Recorded() bool { return e.Closer != "" }

// Summary describes a finished connection.
type Summary struct {
	Start, End time.Time
	Ending
	// Legs counts what each side sent and the keepalives it answered.
	Legs PerSide[Counts]
	// Reconnects counts the backend re-dials (terminate mode).
	Reconnects int
}

// Counts is what is counted on one leg: the bytes and messages the side
// sent, the gateway's keepalive pings to it and the Pongs that answered
// them, and the round trip of the last answered ping.
type Counts struct {
	Bytes, Messages, Pings, Pongs int64
	RTT                           time.Duration
}

// Plus returns the counts of c and o together; RTT stays c's (the latest
// leg's).
func (c Counts) Plus(o Counts) Counts {
	c.Bytes += o.Bytes
	c.Messages += o.Messages
	c.Pings += o.Pings
	c.Pongs += o.Pongs
	return c
}

// LegView is a live view of one side of a connection.
type LegView struct {
	Counts
	liveness.Times
}

// Stats is a live view of a connection.
type Stats struct {
	Legs       PerSide[LegView]
	Reconnects int
}

// Hooks is what every mode tells the gateway of a connection, and the clock
// and close grace it runs on. Each mode's Config embeds it.
type Hooks struct {
	// CloseGrace is how long a leg that was sent a Close frame may take to
	// answer and hang up before its socket is closed. Default 5s.
	CloseGrace time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// OnClose, if set, is called once when the connection is over.
	OnClose func(Summary)
	// OnDrop, if set, is told when a side ends the connection on its own
	// (vanishes, stops answering pings, or sends Close 1000/1001 first)
	// after being silent both ways for silence: what timeout.Learner
	// learns idle timeouts from.
	OnDrop func(side Side, silence time.Duration)
	// OnPong, if set, is told the round trip of each answered keepalive.
	OnPong func(side Side, rtt time.Duration)
}

// Finish tells OnClose that the connection which started at start is
// over, with the given end and the counters of its legs. The mode calls it
// once, when its last reader is done.
func (h *Hooks) Finish(e Ending, start time.Time, legs PerSide[Counts], reconnects int) {
	if h.OnClose != nil {
		h.OnClose(Summary{Start: start, End: h.Now(), Ending: e, Legs: legs, Reconnects: reconnects})
	}
}

// Defaults fills in the clock and the close grace.
func (h *Hooks) Defaults() {
	if h.Now == nil {
		h.Now = time.Now
	}
	if h.CloseGrace <= 0 {
		h.CloseGrace = 5 * time.Second
	}
}
