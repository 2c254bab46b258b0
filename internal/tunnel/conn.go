// Package tunnel relays an upgraded WebSocket connection between a client and
// a backend, frame-aware but transparent: bytes pass through verbatim (no
// payload is unmasked, remasked or buffered whole) while the relay tracks
// frame boundaries, so it can put its own Ping and Close frames between
// frames, consume the Pongs that answer its Pings, and see Close codes.
//
// Each leg is read by one goroutine that parks in the network poller without
// a buffer and borrows a pooled one only when bytes are ready; its read
// deadline doubles as the leg's keepalive/idle timer, so an idle connection
// holds two parked goroutines, two sockets and this struct, and no timer
// goroutine.
package tunnel

import (
	"net"
	"sync"
	"time"

	"github.com/caddy-websocket/caddy-websocket/internal/frame"
	"github.com/caddy-websocket/caddy-websocket/internal/liveness"
	"github.com/caddy-websocket/caddy-websocket/internal/timeout"
)

// Side names a leg of the connection.
type Side int

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

// Config is how a tunnel behaves. The zero value relays with no keepalive
// and no timeouts.
type Config struct {
	// Client and Backend are the idle-timeout policies of each leg.
	Client, Backend timeout.Policy
	// CloseGrace is how long a leg that was sent a Close frame may take to
	// answer and hang up before its socket is closed. Default 5s.
	CloseGrace time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// OnClose, if set, is called once when both legs are closed.
	OnClose func(Summary)
	// OnDrop, if set, is told when a side ends the connection on its own
	// (vanishes, stops answering pings, or sends Close 1000/1001 first)
	// after being silent both ways for silence: what timeout.Learner
	// learns idle timeouts from.
	OnDrop func(side Side, silence time.Duration)
	// OnPong, if set, is told the round trip of each answered keepalive.
	OnPong func(side Side, rtt time.Duration)
}

// Summary describes a finished connection.
type Summary struct {
	Start, End time.Time
	// Closer is who ended the connection: "client", "backend" or "gateway".
	Closer string
	// Code and Reason are from the first Close frame (from the closer, or
	// sent by the gateway); Code is 1006 when the closer vanished without
	// one.
	Code   int
	Reason string
	// Bytes and Messages count what each side sent (index by Side); Pings
	// counts the gateway's pings to each side and Pongs the answers to them.
	Bytes, Messages, Pings, Pongs [2]int64
	// RTT is the round trip of the last answered ping on each side.
	RTT [2]time.Duration
}

// LegStats is a live view of one side of a connection.
type LegStats struct {
	// Bytes and Messages the side sent; Pings the gateway sent it and the
	// Pongs that answered; RTT of the last answered Ping.
	Bytes, Messages, Pings, Pongs int64
	RTT                           time.Duration
	liveness.Times
}

// Stats is a live view of a connection, indexed by Side.
type Stats struct {
	Legs       [2]LegStats
	Reconnects int
}

// Conn is one relayed connection.
type Conn struct {
	cfg   Config
	start time.Time
	legs  [2]leg

	mu      sync.Mutex
	ended   bool // a closer has been recorded
	closer  string
	code    int
	reason  string
	readers int // readers still running (or parked)
}

// New returns a tunnel between an upgraded client connection and an upgraded
// backend connection. Nothing moves until Start.
func New(client, backend net.Conn, cfg Config) *Conn {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.CloseGrace <= 0 {
		cfg.CloseGrace = 5 * time.Second
	}
	c := &Conn{cfg: cfg}
	c.start = cfg.Now()
	c.legs[Client].init(c, Client, client, cfg.Client)
	c.legs[Backend].init(c, Backend, backend, cfg.Backend)
	c.legs[Client].peer = &c.legs[Backend]
	c.legs[Backend].peer = &c.legs[Client]
	return c
}

// Start relays in two goroutines and returns at once. fromClient and
// fromBackend are bytes each side sent that were read during the handshake
// (buffered by the HTTP server or the handshake reader); they are relayed
// first.
func (c *Conn) Start(fromClient, fromBackend []byte) {
	c.readers = 2
	go c.legs[Client].run(fromClient)
	go c.legs[Backend].run(fromBackend)
}

// SetPolicy puts new idle-timeout policies in force on a live connection.
func (c *Conn) SetPolicy(client, backend timeout.Policy) {
	c.legs[Client].live.SetPolicy(client)
	c.legs[Backend].live.SetPolicy(backend)
}

// Stats returns a live view of the connection.
func (c *Conn) Stats() Stats {
	var s Stats
	for i := range c.legs {
		l := &c.legs[i]
		s.Legs[i] = LegStats{Bytes: l.bytes.Load(), Messages: l.msgs.Load(), Times: l.live.Snapshot()}
		s.Legs[i].Pings, s.Legs[i].Pongs, s.Legs[i].RTT = l.live.Pings()
	}
	return s
}

// Policy returns the policy in force on a side.
func (c *Conn) Policy(s Side) timeout.Policy { return c.legs[s].live.Policy() }

func (c *Conn) dropped(s Side, silence time.Duration) {
	if c.cfg.OnDrop != nil {
		c.cfg.OnDrop(s, silence)
	}
}

// Close ends the connection from the gateway's side: both legs get a Close
// frame with code and reason and a grace period to answer.
func (c *Conn) Close(code int, reason string) {
	c.gatewayClose(code, reason, code, reason)
}

// gatewayClose sends each leg its own Close frame and starts closing both.
func (c *Conn) gatewayClose(clientCode int, clientReason string, backendCode int, backendReason string) {
	c.record("gateway", clientCode, clientReason)
	c.legs[Client].sendClose(clientCode, clientReason)
	c.legs[Backend].sendClose(backendCode, backendReason)
	c.legs[Client].startClosing(c.cfg.CloseGrace)
	c.legs[Backend].startClosing(c.cfg.CloseGrace)
}

// record notes the first closer; later calls are ignored.
func (c *Conn) record(closer string, code int, reason string) {
	c.mu.Lock()
	if !c.ended {
		c.ended = true
		c.closer, c.code, c.reason = closer, code, reason
	}
	c.mu.Unlock()
}

// readerDone is called by each reader as it exits, with its socket closed.
// A leg that ended without its peer's Close frame (the peer vanished, or a
// write to it failed) gets the other leg a Close frame of its own here, so
// neither side ever sees the connection drop without one because of the
// gateway.
func (c *Conn) readerDone(l *leg, why string) {
	if !l.closeRecv.Load() {
		switch {
		case l.stoppedReading():
			c.record("gateway", frame.CloseGoingAway, l.side.String()+" stopped reading (write timeout)")
			if l.side == Client {
				l.peer.sendClose(frame.CloseGoingAway, "client stopped reading")
			} else {
				l.peer.sendClose(frame.CloseInternalError, "backend stopped reading")
			}
		case l.side == Client:
			c.record("client", frame.CloseAbnormal, "client went away: "+why)
			l.peer.sendClose(frame.CloseGoingAway, "client went away")
		default:
			c.record("backend", frame.CloseAbnormal, "backend went away: "+why)
			l.peer.sendClose(frame.CloseInternalError, "backend closed the connection without a Close frame")
		}
	}
	// The other leg gets a grace period to finish its side of the close.
	l.peer.startClosing(c.cfg.CloseGrace)

	c.mu.Lock()
	c.readers--
	last := c.readers == 0
	c.mu.Unlock()
	if !last {
		return
	}
	sum := Summary{Closer: c.closer, Code: c.code, Reason: c.reason, Start: c.start, End: c.cfg.Now()}
	for _, s := range []Side{Client, Backend} {
		sum.Bytes[s] = c.legs[s].bytes.Load()
		sum.Messages[s] = c.legs[s].msgs.Load()
		sum.Pings[s], sum.Pongs[s], sum.RTT[s] = c.legs[s].live.Pings()
	}
	if c.cfg.OnClose != nil {
		c.cfg.OnClose(sum)
	}
}
