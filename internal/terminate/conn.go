// Package terminate relays WebSocket messages between a client and a backend
// over two separate WebSocket connections that the gateway terminates. The
// client leg is a complete, validating RFC 6455 server (with
// permessage-deflate when the client offers it); the backend leg is the
// gateway's own plain client connection. Because the legs are separate, the
// gateway can protect a legacy backend from bad frames, speak compression
// the backend can't, and hide backend restarts from the client by
// re-dialling while it holds the client's messages.
//
// Messages are relayed one at a time: each direction holds at most the
// message it is writing, and a peer that does not read for WriteTimeout is
// dropped, so memory stays bounded whatever the peers do.
package terminate

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-websocket/caddy-websocket/internal/frame"
	"github.com/caddy-websocket/caddy-websocket/internal/relay"
	"github.com/caddy-websocket/caddy-websocket/internal/timeout"
)

// Config is how a terminated connection behaves.
type Config struct {
	// Client and Backend are the idle-timeout policies of each leg.
	Client, Backend timeout.Policy
	// MaxMessageSize is the largest message accepted from either side,
	// after decompression; a larger one is refused with 1009 while it is
	// being read. Default 1 MiB.
	MaxMessageSize int64
	// MaxMessageRate bounds the messages per second from the client (bursts
	// of as many); past it, Close 1008. Zero: no bound.
	MaxMessageRate float64
	// Deflate is set when permessage-deflate was negotiated with the client.
	Deflate bool
	// Reconnect keeps the client when the backend connection drops and
	// re-dials with Redial.
	Reconnect bool
	// ReconnectAttempts bounds the re-dials of one gap (0: no bound).
	ReconnectAttempts int
	// ReconnectWindow bounds the time of one gap. Default 10s.
	ReconnectWindow time.Duration
	// ReconnectBuffer bounds the bytes of client messages held during a
	// gap; past it the client is closed with 1011. Default 1 MiB.
	ReconnectBuffer int64
	// Redial dials a backend and completes a WebSocket handshake with it,
	// returning the connection and any bytes read past the handshake.
	Redial func(ctx context.Context) (net.Conn, []byte, error)
	// OnReconnect, if set, is told of every re-dial attempt and its result.
	OnReconnect func(attempt int, err error)
	// Resume keeps the backend when the client vanishes (its connection
	// drops, or it stops answering Pings): the session detaches and waits
	// ResumeWindow for the client to come back (Attach), holding up to
	// ResumeBuffer bytes of messages for it. See resume.go.
	Resume bool
	// ResumeWindow: how long a detached session waits. Default 30s.
	ResumeWindow time.Duration
	// ResumeBuffer bounds the bytes of messages kept for a client that may
	// not have read them, and held while it is away. Default 1 MiB.
	ResumeBuffer int64
	// OnDetach, OnResume and OnExpire, if set, are told when the session
	// detaches (why), is resumed (how many messages were replayed), and
	// ends without its client (why).
	OnDetach func(reason string)
	OnResume func(replayed int)
	OnExpire func(why string)
	relay.Hooks
}

// queued is a client message held during a reconnect gap.
type queued struct {
	op frame.Opcode
	p  []byte
}

// Conn is one terminated connection.
type Conn struct {
	cfg    Config
	start  time.Time
	client atomic.Pointer[leg] // replaced by Attach after a resume
	push   pushQueue

	mu         sync.Mutex
	backend    backendLeg // nil during a reconnect gap
	queue      []queued
	queuedSize int64
	done       bool // ending: no more reconnects, messages are dropped
	redialing  bool
	running    int // legs whose readers run
	reconnects int
	end        relay.Ending
	finished   bool
	latest     backendLeg   // the latest backend, also during a gap, for counters
	backendOld relay.Counts // counters of the backends it replaced

	// Resume (resume.go): detached while the session waits for its
	// client; the rest exists only once a client has detached.
	detached bool
	away     *away
}

// New returns a terminated connection between an upgraded client connection
// and an upgraded backend connection. Nothing moves until Start.
func New(client, backend net.Conn, cfg Config) *Conn {
	c := newConn(client, cfg)
	c.backend = newEndpoint(c, relay.Backend, backend, cfg.Backend)
	c.latest = c.backend
	return c
}

// newConn applies the defaults and makes the client's leg.
func newConn(client net.Conn, cfg Config) *Conn {
	cfg.Hooks.Defaults()
	if cfg.MaxMessageSize <= 0 {
		cfg.MaxMessageSize = 1 << 20
	}
	if cfg.ReconnectWindow <= 0 {
		cfg.ReconnectWindow = 10 * time.Second
	}
	if cfg.ReconnectBuffer <= 0 {
		cfg.ReconnectBuffer = 1 << 20
	}
	if cfg.ResumeWindow <= 0 {
		cfg.ResumeWindow = 30 * time.Second
	}
	if cfg.ResumeBuffer <= 0 {
		cfg.ResumeBuffer = 1 << 20
	}
	c := &Conn{cfg: cfg, start: cfg.Now()}
	cl := newEndpoint(c, relay.Client, client, cfg.Client)
	cl.deflate = cfg.Deflate
	c.client.Store(cl)
	return c
}

// Start relays in two goroutines (one with an Upstream) and returns at
// once; fromClient and fromBackend are bytes read past the handshakes.
func (c *Conn) Start(fromClient, fromBackend []byte) {
	e, ok := c.backend.(*leg)
	if !ok {
		c.running = 1
		go c.client.Load().Run(fromClient)
		return
	}
	c.running = 2
	go c.client.Load().Run(fromClient)
	go e.Run(fromBackend)
}

// SetPolicy puts new idle-timeout policies in force on a live connection,
// and on backends it re-dials later.
func (c *Conn) SetPolicy(client, backend timeout.Policy) {
	c.mu.Lock()
	c.cfg.Client, c.cfg.Backend = client, backend
	b := c.backend
	c.mu.Unlock()
	c.client.Load().Live.SetPolicy(client)
	if b != nil {
		b.setPolicy(backend)
	}
}

// Stats returns a live view of the connection; the backend's counters
// include those of backends it replaced.
func (c *Conn) Stats() relay.Stats {
	c.mu.Lock()
	b, old, n := c.latest, c.backendOld, c.reconnects
	var cold relay.Counts
	if c.away != nil {
		cold = c.away.clientOld
	}
	c.mu.Unlock()
	bs := b.Stats()
	bs.Counts = bs.Counts.Plus(old)
	cs := c.client.Load().Stats()
	cs.Counts = cs.Counts.Plus(cold)
	return relay.Stats{Legs: relay.PerSide[relay.LegView]{Client: cs, Backend: bs}, Reconnects: n}
}

// Policy returns the policy in force on a side.
func (c *Conn) Policy(s relay.Side) timeout.Policy {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s == relay.Client {
		return c.cfg.Client
	}
	return c.cfg.Backend
}

func (c *Conn) dropped(e *leg, silence time.Duration) {
	if c.cfg.OnDrop == nil {
		return
	}
	c.cfg.OnDrop(e.Side(), silence)
}

// Close ends the connection from the gateway: both sides get Close with
// code and reason.
func (c *Conn) Close(code frame.StatusCode, reason string) {
	c.mu.Lock()
	c.done = true
	c.record("gateway", code, reason)
	b := c.backend
	finish := false
	if c.detached {
		// No client to tell: the backend alone closes.
		c.detached, c.away.held, c.away.heldSize = false, nil, 0
		c.away.expiry.Stop()
		finish = c.running == 0
	}
	c.mu.Unlock()
	c.client.Load().close(code, reason)
	if b != nil {
		b.close(code, reason)
	}
	if finish {
		c.finish()
	}
}

// record notes the first closer; the caller holds c.mu.
func (c *Conn) record(closer string, code frame.StatusCode, reason string) {
	c.end.Record(closer, code, reason)
}

// flushPeer writes what e's read queued for the other side.
func (c *Conn) flushPeer(e *leg) {
	if cl := c.client.Load(); e != cl {
		cl.flush()
		return
	}
	c.mu.Lock()
	b := c.backend
	c.mu.Unlock()
	if b != nil {
		b.flush()
	}
}

// message relays a complete message from e to the other side.
func (c *Conn) message(e *leg, op frame.Opcode, p []byte) {
	if cl := c.client.Load(); e != cl {
		if !cl.queueMessage(op, p) && c.cfg.Resume {
			// The session detached from that client: hold the message.
			c.mu.Lock()
			if !c.detached || c.done {
				c.mu.Unlock()
				return
			}
			c.holdForClientLocked(op, p) // unlocks
		}
		return
	}
	c.mu.Lock()
	b := c.backend
	if b == nil {
		c.hold(op, p)
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	if !b.queueMessage(op, p) {
		// The backend is going; with reconnect on, the message waits for
		// the next one instead of being lost.
		c.mu.Lock()
		if c.cfg.Reconnect && !c.done {
			c.hold(op, p)
		}
		c.mu.Unlock()
	}
}

// hold queues a client message during a reconnect gap; the caller holds
// c.mu.
func (c *Conn) hold(op frame.Opcode, p []byte) {
	if c.done {
		return
	}
	if c.queuedSize+int64(len(p)) > c.cfg.ReconnectBuffer {
		c.done = true
		c.record("gateway", frame.CloseInternalError, "reconnect buffer full")
		go c.client.Load().close(frame.CloseInternalError, "backend unavailable and reconnect buffer full")
		return
	}
	c.queue = append(c.queue, queued{op, append([]byte(nil), p...)})
	c.queuedSize += int64(len(p))
}

// ended is told, once per leg, how its session ended.
func (c *Conn) ended(e *leg, how ending) {
	c.mu.Lock()
	if e.taken.Load() {
		c.mu.Unlock()
		return // a client leg a new connection took over: the session goes on
	}
	if e == c.client.Load() {
		if how.vanished && e.resumable() && !c.done && !c.detached {
			if c.detachLocked(e, how.reason) {
				c.mu.Unlock()
				return
			}
		}
		c.done = true
		closer := "client"
		if !how.byPeer && how.code != frame.CloseAbnormal {
			closer = "gateway"
		}
		c.record(closer, how.code, how.reason)
		b := c.backend
		c.mu.Unlock()
		if b != nil {
			code, reason := forBackend(how)
			if _, up := b.(messageLeg); up && !how.byPeer && how.code == frame.CloseAbnormal {
				code = frame.CloseAbnormal // an Upstream tells a vanished client apart (DISCONNECT)
			}
			b.close(code, reason)
		}
		return
	}
	if c.backend != backendLeg(e) || c.done {
		c.mu.Unlock()
		return // a replaced backend, or the end is already under way
	}
	if c.cfg.Reconnect && c.cfg.Redial != nil && reconnectable(how) {
		c.backend = nil
		c.redialing = true
		c.mu.Unlock()
		e.close(frame.CloseGoingAway, "reconnecting")
		go c.redial()
		return
	}
	c.done = true
	closer := "backend"
	if !how.byPeer && how.code != frame.CloseAbnormal {
		closer = "gateway"
	}
	c.record(closer, how.code, how.reason)
	c.mu.Unlock()
	code, reason := forClient(how)
	if c.detached {
		// The backend ended while its client was away.
		c.detached, c.away.held, c.away.heldSize = false, nil, 0
		c.away.expiry.Stop()
	}
	c.client.Load().close(code, reason)
}

// reconnectable reports whether a backend's end is one to hide from the
// client: it vanished, restarted or stopped answering, rather than closed
// the session on purpose.
func reconnectable(how ending) bool {
	if !how.byPeer {
		return how.code == frame.CloseAbnormal || how.code == frame.CloseGoingAway
	}
	switch how.code {
	case frame.CloseGoingAway, frame.CloseAbnormal, frame.CloseInternalError,
		frame.CloseServiceRestart, frame.CloseTryAgainLater, frame.CloseBadGateway:
		return true
	}
	return false
}

// forBackend is the Close the backend gets when the client's session ended.
func forBackend(how ending) (frame.StatusCode, string) {
	switch {
	case how.byPeer && how.code == frame.CloseNoStatus:
		return frame.CloseNormal, ""
	case how.byPeer:
		return how.code, how.reason
	case how.code == frame.CloseAbnormal:
		return frame.CloseGoingAway, "client went away"
	}
	return frame.CloseGoingAway, how.reason
}

// forClient is the Close the client gets when the backend's session ended
// for good.
func forClient(how ending) (frame.StatusCode, string) {
	switch {
	case how.byPeer && how.code == frame.CloseNoStatus:
		return frame.CloseNormal, ""
	case how.byPeer:
		return how.code, how.reason
	case how.code == frame.CloseAbnormal:
		return frame.CloseInternalError, "backend closed the connection without a Close frame"
	case how.code == frame.CloseProtocolError || how.code == frame.CloseInvalidPayload || how.code == frame.CloseTooBig:
		return frame.CloseBadGateway, how.reason
	}
	return frame.CloseInternalError, how.reason
}

// redial re-dials the backend with exponential backoff until it answers,
// the attempts or the window run out, or the client goes.
func (c *Conn) redial() {
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.ReconnectWindow)
	defer cancel()
	backoff := 100 * time.Millisecond
	var lastErr error
	for attempt := 1; c.cfg.ReconnectAttempts == 0 || attempt <= c.cfg.ReconnectAttempts; attempt++ {
		if c.isDone() {
			break
		}
		conn, buffered, err := c.cfg.Redial(ctx)
		if err == nil && c.resume(conn, buffered) {
			if c.cfg.OnReconnect != nil {
				c.cfg.OnReconnect(attempt, nil)
			}
			return
		}
		if err == nil {
			err = context.Canceled // the client went, or the queue could not be sent
		}
		lastErr = err
		if c.cfg.OnReconnect != nil {
			c.cfg.OnReconnect(attempt, err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		if ctx.Err() != nil {
			break
		}
		backoff = min(2*backoff, 2*time.Second)
	}
	c.mu.Lock()
	c.redialing = false
	wasDone := c.done
	c.done = true
	reason := "backend unavailable"
	if lastErr != nil {
		reason += ": " + lastErr.Error()
	}
	c.record("gateway", frame.CloseInternalError, reason)
	finish := c.running == 0
	c.mu.Unlock()
	if !wasDone {
		c.client.Load().close(frame.CloseInternalError, reason)
	}
	if finish {
		c.finish()
	}
}

func (c *Conn) isDone() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.done
}

// resume makes conn the backend and sends it the held messages, in order.
func (c *Conn) resume(conn net.Conn, buffered []byte) bool {
	c.mu.Lock()
	e := newEndpoint(c, relay.Backend, conn, c.cfg.Backend)
	defer c.mu.Unlock()
	if c.done {
		conn.Close()
		return false
	}
	for _, m := range c.queue {
		if !e.writeMessage(m.op, m.p) {
			conn.Close()
			return false
		}
	}
	c.backendOld = c.backendOld.Plus(c.latest.Counts())
	c.latest = e
	c.queue, c.queuedSize = nil, 0
	c.backend, c.redialing = e, false
	c.running++
	c.reconnects++
	go e.Run(buffered)
	return true
}

// exited is called as each leg's reader returns.
func (c *Conn) exited(e *leg) {
	c.mu.Lock()
	c.running--
	last := c.running == 0 && !c.redialing && !c.detached
	c.mu.Unlock()
	if last {
		c.finish()
	}
}

func (c *Conn) finish() {
	c.mu.Lock()
	if c.finished {
		c.mu.Unlock()
		return
	}
	c.finished = true
	end, n := c.end, c.reconnects
	c.mu.Unlock()
	st := c.Stats()
	c.cfg.Finish(end, c.start, relay.PerSide[relay.Counts]{Client: st.Legs.Client.Counts, Backend: st.Legs.Backend.Counts}, n)
}
