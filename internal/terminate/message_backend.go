package terminate

import (
	"net"

	"github.com/caddy-websocket/caddy-websocket/internal/frame"
	"github.com/caddy-websocket/caddy-websocket/internal/relay"
	"github.com/caddy-websocket/caddy-websocket/internal/timeout"
)

// MessageBackend is a backend the gateway does not reach over a WebSocket of its
// own (WebSocket-over-HTTP, package overhttp). It takes the client's
// messages; what it has for the client goes through the Conn's Deliver,
// FlushClient and BackendEnded.
type MessageBackend interface {
	// Send takes a client message, in order; p is only valid during the
	// call. It may block (backpressure on the client's reader) and
	// reports false once the upstream is over.
	Send(op frame.Opcode, p []byte) bool
	// Flush: the client's read is handled; what was Sent may go.
	Flush()
	// Close: the client's session ended, with the client's Close code (or
	// the gateway's), or 1006 when the client vanished.
	Close(code frame.StatusCode, reason string)
	// Stats and Counts are the backend side's view.
	Stats() relay.LegView
	Counts() relay.Counts
}

// backendLeg is what a Conn needs of its backend: a WebSocket leg, or
// an Upstream.
type backendLeg interface {
	queueMessage(op frame.Opcode, p []byte) bool
	flush()
	close(code frame.StatusCode, reason string)
	setPolicy(timeout.Policy)
	Stats() relay.LegView
	Counts() relay.Counts
}

func (l *leg) setPolicy(p timeout.Policy) { l.Live.SetPolicy(p) }

type messageLeg struct{ MessageBackend }

func (u messageLeg) queueMessage(op frame.Opcode, p []byte) bool { return u.Send(op, p) }
func (u messageLeg) flush()                                      { u.Flush() }
func (u messageLeg) close(code frame.StatusCode, reason string)  { u.Close(code, reason) }

// An Upstream holds no socket: no keepalive to run on it.
func (messageLeg) setPolicy(timeout.Policy) {}

// NewMessageBackend returns a terminated connection between an upgraded client
// connection and an Upstream; nothing moves until Start. Reconnect does
// not apply (an Upstream holds no connection to lose).
func NewMessageBackend(client net.Conn, up MessageBackend, cfg Config) *Conn {
	cfg.Reconnect = false
	c := newConn(client, cfg)
	c.backend = messageLeg{up}
	c.latest = c.backend
	return c
}

// Deliver sends the client a message (text, binary) or control frame
// (ping, pong) from the Upstream.
func (c *Conn) Deliver(op frame.Opcode, p []byte) {
	if op.IsControl() {
		c.client.Load().writeControl(op, p)
		return
	}
	c.client.Load().queueMessage(op, p)
}

// FlushClient writes what Deliver held back.
func (c *Conn) FlushClient() { c.client.Load().flush() }

// BackendEnded closes the client because the Upstream ended: with the
// backend's own Close code (byPeer), or 1011 and why it failed.
func (c *Conn) BackendEnded(byPeer bool, code frame.StatusCode, reason string) {
	c.mu.Lock()
	if c.done {
		c.mu.Unlock()
		return
	}
	c.done = true
	c.record("backend", code, reason)
	c.mu.Unlock()
	cc, cr := forClient(ending{byPeer: byPeer, code: code, reason: reason})
	c.client.Load().close(cc, cr)
}
