package terminate

import (
	"errors"
	"net"
	"time"

	"github.com/caddy-websocket/caddy-websocket/internal/frame"
	"github.com/caddy-websocket/caddy-websocket/internal/relay"
	"github.com/caddy-websocket/caddy-websocket/internal/relay/liveness"
	"github.com/caddy-websocket/caddy-websocket/internal/relay/quiet"
)

// Session resume, the client side's mirror of Reconnect: when the client
// leg ends without a Close frame (its network dropped), the backend leg
// stays; its messages are held; a new client connection that proves it
// is the same client (the gateway's token, checked by the caller) is
// attached and gets, in order, the messages the old one did not receive,
// then live ones. The backend sees nothing.
//
// What the old client received is known two ways. Every Pong that answers
// one of the gateway's keepalive Pings says the client read everything
// written before that Ping: those messages are forgotten. For the rest,
// on a TCP path (ws, wss) the kernel says how many bytes the client's TCP
// acknowledged (TCP_INFO), and each message remembers the byte offset its
// write ended at, TLS records included: a message whose last byte was
// acknowledged reached the client. With resume on, the client leg writes
// each message on its own (no batching), so that a message's last record
// ends where its offset says. On a stream (HTTP/2, HTTP/3) there is no
// TCP of its own: every message not acknowledged by a Pong is sent again,
// and the client may get some twice.

// ErrNotDetached: the session has a client (or has ended); Attach needs a
// detached one.
var ErrNotDetached = errors.New("the session is not waiting for its client")

// sentMsg is a message written to the client that it may not have read.
type sentMsg struct {
	op    frame.Opcode
	p     []byte // uncompressed: the next client leg may not deflate
	end   uint64 // the socket's written-byte count after it; 0: unknown
	pings uint32 // the gateway's Pings written before it
}

// sentLog is the client leg's record of such messages; guarded by the
// away is what a session keeps of clients that detached: allocated at the
// first detach, so a connection that never loses its client (and every
// one without resume) does not carry it. Guarded by Conn.mu.
type away struct {
	since     time.Time // the current detach
	held      []sentMsg // for the detached client, in order
	heldSize  int64
	expiry    *time.Timer
	clientOld relay.Counts // counters of the client legs it replaced
}

// leg's wmu.
type sentLog struct {
	msgs  []sentMsg
	size  int64
	pings uint32 // Pings written on this leg
	lossy bool   // a message had to be forgotten unacknowledged
}

// record notes a message just written, with the socket's count after it.
func (l *leg) recordSentLocked(op frame.Opcode, p []byte, written bool) {
	s := &l.sent
	var end uint64 // unknown: not written, or no TCP under it
	if written {
		end, _ = quiet.Written(l.Conn())
	}
	s.msgs = append(s.msgs, sentMsg{op: op, p: append([]byte(nil), p...), end: end, pings: s.pings})
	s.size += int64(len(p))
	if s.size <= l.c.cfg.ResumeBuffer {
		return
	}
	// Past the bound: forget what the client's TCP has acknowledged.
	if acked, ok := quiet.Acked(l.Conn()); ok {
		l.forgetAckedLocked(acked)
	}
	for s.size > l.c.cfg.ResumeBuffer && len(s.msgs) > 0 {
		s.size -= int64(len(s.msgs[0].p))
		s.msgs = s.msgs[1:]
		s.lossy = true
	}
}

// writeRecordedLocked writes a prepared message (h, p; orig uncompressed)
// to a resumable client leg and records it, as not received when the
// connection failed. The caller holds wmu.
func (l *leg) writeRecordedLocked(h frame.Header, p []byte, op frame.Opcode, orig []byte) {
	written := !l.writeDead && l.writeLocked(l.hdrOut[:frame.PutHeader(l.hdrOut[:], h)], p)
	l.recordSentLocked(op, orig, written)
}

// forgetLocked drops the oldest messages as long as received says the
// client has them.
func (l *leg) forgetLocked(received func(*sentMsg) bool) {
	s := &l.sent
	i := 0
	for i < len(s.msgs) && received(&s.msgs[i]) {
		s.size -= int64(len(s.msgs[i].p))
		i++
	}
	s.msgs = s.msgs[i:]
}

// forgetAckedLocked drops the messages whose last byte the client's TCP
// acknowledged.
func (l *leg) forgetAckedLocked(acked uint64) {
	l.forgetLocked(func(m *sentMsg) bool { return m.end != 0 && m.end <= acked })
}

// ponged drops the messages written before the Ping that the Pong p
// answers: the client has read them.
func (l *leg) ponged(p []byte) {
	seq, ok := liveness.PingSeq(p)
	if !ok || !l.c.cfg.Resume || l.Side() != relay.Client {
		return
	}
	l.wmu.Lock()
	defer l.wmu.Unlock()
	l.forgetLocked(func(m *sentMsg) bool { return m.pings < seq })
}

// BeforeClose notes, for a client leg that may be resumed, what its
// client acknowledged, while the socket still says.
func (l *leg) BeforeClose() {
	if !l.c.cfg.Resume || l.Side() != relay.Client {
		return
	}
	if acked, ok := quiet.Acked(l.Conn()); ok {
		l.wmu.Lock()
		l.forgetAckedLocked(acked)
		l.ackedKnown = true
		l.wmu.Unlock()
	}
}

// unreceived stops all writes to the leg and returns the messages its
// client may not have received, in order; ok is false when some had to be
// forgotten unacknowledged (the session cannot be resumed exactly).
func (l *leg) unreceived() (msgs []sentMsg, ok bool) {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	l.detached = true // nothing more goes to the old client
	if !l.ackedKnown {
		if acked, known := quiet.Acked(l.Conn()); known {
			l.forgetAckedLocked(acked)
		}
	}
	msgs, ok = l.sent.msgs, !l.sent.lossy
	l.sent = sentLog{}
	return msgs, ok
}

// detachLocked makes the session wait for its client: the caller holds
// c.mu and has checked that resume applies. It reports false when the
// session cannot be resumed (it then ends as it would have).
func (c *Conn) detachLocked(old *leg, reason string) bool {
	msgs, ok := old.unreceived()
	var size int64
	for _, m := range msgs {
		size += int64(len(m.p))
	}
	if !ok || c.cfg.ResumeWindow <= 0 || size > c.cfg.ResumeBuffer {
		return false
	}
	if c.away == nil {
		c.away = &away{}
	}
	c.detached = true
	c.away.since = c.cfg.Now()
	c.away.held, c.away.heldSize = msgs, size
	c.away.expiry = time.AfterFunc(c.cfg.ResumeWindow, c.expire)
	if c.cfg.OnDetach != nil {
		go c.cfg.OnDetach(reason)
	}
	return true
}

// holdForClientLocked keeps a backend message for the detached client; the
// caller holds c.mu, which is released. Past ResumeBuffer the session ends
// as the drop would have ended it.
func (c *Conn) holdForClientLocked(op frame.Opcode, p []byte) {
	a := c.away
	if a.heldSize+int64(len(p)) > c.cfg.ResumeBuffer {
		c.endDetachedLocked("resume buffer full")
		return
	}
	a.held = append(a.held, sentMsg{op: op, p: append([]byte(nil), p...)})
	a.heldSize += int64(len(p))
	c.mu.Unlock()
}

// expire ends a session whose client did not come back within the window.
func (c *Conn) expire() {
	c.mu.Lock()
	if !c.detached || c.done {
		c.mu.Unlock()
		return
	}
	c.endDetachedLocked("resume window over")
}

// endDetachedLocked ends a detached session: the backend gets what it
// would have got at the drop (1001 "client went away"), only later. The
// caller holds c.mu, which is released.
func (c *Conn) endDetachedLocked(why string) {
	c.detached = false
	c.done = true
	c.away.held, c.away.heldSize = nil, 0
	if c.away.expiry != nil {
		c.away.expiry.Stop()
	}
	c.record("client", frame.CloseAbnormal, "client went away and did not resume: "+why)
	b := c.backend
	finish := c.running == 0
	c.mu.Unlock()
	if c.cfg.OnExpire != nil {
		c.cfg.OnExpire(why)
	}
	if b != nil {
		code, reason := frame.CloseGoingAway, "client went away"
		if _, msgs := b.(messageLeg); msgs {
			code = frame.CloseAbnormal // a message backend hears DISCONNECT, as at the drop
		}
		b.close(code, reason)
	}
	if finish {
		c.finish()
	}
}

// Detached reports whether the session waits for its client, and until
// when.
func (c *Conn) Detached() (bool, time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.detached {
		return false, time.Time{}
	}
	return true, c.away.since.Add(c.cfg.ResumeWindow)
}

// TakeOver detaches a session whose client leg is still attached (a path
// that went silent, not yet known dead): the client came back on a new
// connection, so the old one is closed and what it did not acknowledge
// waits for the new one. It reports whether the session is now detached.
func (c *Conn) TakeOver() bool {
	c.mu.Lock()
	if c.detached {
		c.mu.Unlock()
		return true
	}
	old := c.client.Load()
	if c.done || !c.cfg.Resume {
		c.mu.Unlock()
		return false
	}
	ok := c.detachLocked(old, "the client came back on a new connection")
	old.taken.Store(true) // its end is not the session's
	c.mu.Unlock()
	if !ok {
		c.Close(frame.CloseGoingAway, "client came back, but what it missed is no longer known")
		return false
	}
	old.Conn().Close() // its reader exits; the session stays
	return true
}

// Attach makes conn, an upgraded client connection, the client leg of a
// detached session (deflate: permessage-deflate was negotiated on it):
// the messages the old client did not receive go first, in order, then
// relaying resumes. fromClient holds bytes read past the handshake.
func (c *Conn) Attach(conn net.Conn, fromClient []byte, deflate bool) error {
	c.mu.Lock()
	if !c.detached || c.done {
		c.mu.Unlock()
		return ErrNotDetached
	}
	e := newEndpoint(c, relay.Client, conn, c.cfg.Client)
	e.deflate = deflate
	a := c.away
	for _, m := range a.held {
		if !e.writeMessage(m.op, m.p) {
			c.mu.Unlock()
			conn.Close()
			return errors.New("the client went away again during the replay")
		}
	}
	replayed := len(a.held)
	a.held, a.heldSize = nil, 0
	c.detached = false
	a.expiry.Stop()
	a.clientOld = a.clientOld.Plus(c.client.Load().Counts())
	c.client.Store(e)
	c.running++
	c.mu.Unlock()
	if c.cfg.OnResume != nil {
		c.cfg.OnResume(replayed)
	}
	c.kickPushes() // pushes that waited for the client
	go e.Run(fromClient)
	return nil
}
