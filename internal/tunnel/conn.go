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
	"github.com/caddy-websocket/caddy-websocket/internal/relay"
	"github.com/caddy-websocket/caddy-websocket/internal/timeout"
)

// Side names a leg of the connection (the relay core's).
type Side = relay.Side

// The two legs.
const (
	Client  = relay.Client
	Backend = relay.Backend
)

// Config is how a tunnel behaves. The zero value relays with no keepalive
// and no timeouts.
type Config struct {
	// Client and Backend are the idle-timeout policies of each leg.
	Client, Backend timeout.Policy
	relay.Hooks
}

// Conn is one relayed connection.
type Conn struct {
	cfg   Config
	start time.Time
	legs  relay.PerSide[leg]

	mu      sync.Mutex
	end     relay.Ending
	readers int // readers still running (or parked)
}

// New returns a tunnel between an upgraded client connection and an upgraded
// backend connection. Nothing moves until Start.
func New(client, backend net.Conn, cfg Config) *Conn {
	cfg.Hooks.Defaults()
	c := &Conn{cfg: cfg}
	c.start = cfg.Now()
	c.legs.Client.init(c, Client, client, cfg.Client)
	c.legs.Backend.init(c, Backend, backend, cfg.Backend)
	c.legs.Client.other = &c.legs.Backend
	c.legs.Backend.other = &c.legs.Client
	return c
}

// Start relays in two goroutines and returns at once. fromClient and
// fromBackend are bytes each side sent that were read during the handshake
// (buffered by the HTTP server or the handshake reader); they are relayed
// first.
func (c *Conn) Start(fromClient, fromBackend []byte) {
	c.readers = 2
	go c.legs.Client.Run(fromClient)
	go c.legs.Backend.Run(fromBackend)
}

// SetPolicy puts new idle-timeout policies in force on a live connection.
func (c *Conn) SetPolicy(client, backend timeout.Policy) {
	c.legs.Client.Live.SetPolicy(client)
	c.legs.Backend.Live.SetPolicy(backend)
}

// Stats returns a live view of the connection.
func (c *Conn) Stats() relay.Stats {
	return relay.Stats{Legs: relay.PerSide[relay.LegView]{Client: c.legs.Client.Stats(), Backend: c.legs.Backend.Stats()}}
}

// Policy returns the policy in force on a side.
func (c *Conn) Policy(s Side) timeout.Policy { return c.legs.Of(s).Live.Policy() }

func (c *Conn) dropped(s Side, silence time.Duration) {
	if c.cfg.OnDrop != nil {
		c.cfg.OnDrop(s, silence)
	}
}

// Close ends the connection from the gateway's side: both legs get a Close
// frame with code and reason and a grace period to answer.
func (c *Conn) Close(code frame.StatusCode, reason string) {
	c.gatewayClose(code, reason, code, reason)
}

// gatewayClose sends each leg its own Close frame and starts closing both.
func (c *Conn) gatewayClose(clientCode frame.StatusCode, clientReason string, backendCode frame.StatusCode, backendReason string) {
	c.record("gateway", clientCode, clientReason)
	c.legs.Client.sendClose(clientCode, clientReason)
	c.legs.Backend.sendClose(backendCode, backendReason)
	c.legs.Client.StartClosing(c.cfg.CloseGrace)
	c.legs.Backend.StartClosing(c.cfg.CloseGrace)
}

// record notes the first closer; later calls are ignored.
func (c *Conn) record(closer string, code frame.StatusCode, reason string) {
	c.mu.Lock()
	c.end.Record(closer, code, reason)
	c.mu.Unlock()
}

// readerDone is called by each reader as it exits, with its socket closed.
// A leg that ended without its peer's Close frame (the peer vanished, or a
// write to it failed) gets the other leg a Close frame of its own here, so
// neither side ever sees the connection drop without one because of the
// gateway.
func (c *Conn) readerDone(l *leg, why string) {
	if !l.CloseReceived() {
		switch {
		case l.stoppedReading():
			c.record("gateway", frame.CloseGoingAway, l.Side().String()+" stopped reading (write timeout)")
			if l.Side() == Client {
				l.other.sendClose(frame.CloseGoingAway, "client stopped reading")
			} else {
				l.other.sendClose(frame.CloseInternalError, "backend stopped reading")
			}
		case l.Side() == Client:
			c.record("client", frame.CloseAbnormal, "client went away: "+why)
			l.other.sendClose(frame.CloseGoingAway, "client went away")
		default:
			c.record("backend", frame.CloseAbnormal, "backend went away: "+why)
			l.other.sendClose(frame.CloseInternalError, "backend closed the connection without a Close frame")
		}
	}
	// The other leg gets a grace period to finish its side of the close.
	l.other.StartClosing(c.cfg.CloseGrace)

	c.mu.Lock()
	c.readers--
	last := c.readers == 0
	c.mu.Unlock()
	if !last {
		return
	}
	c.cfg.Finish(c.end, c.start, relay.PerSide[relay.Counts]{Client: c.legs.Client.Counts(), Backend: c.legs.Backend.Counts()}, 0)
}
