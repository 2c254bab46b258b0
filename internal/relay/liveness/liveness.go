// Package liveness times a leg's idle-timeout policy for every mode: it
// records what happens on the leg (reads, writes, forwarded frames, pings)
// and asks timeout.Policy what to do and when. It only times and decides;
// the socket's reads and writes are the leg's (package relay).
// While the leg's reader runs, the policy's next event is the socket's read
// deadline; once the leg has read nothing for ParkAfter, the reader parks
// (package quiet) with the next event on a runtime timer. Either way the leg
// has no timer goroutine: its reader runs when there is something to do.
package liveness

import (
	"encoding/binary"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/caddy-websocket/caddy-websocket/internal/relay/quiet"
	"github.com/caddy-websocket/caddy-websocket/internal/timeout"
)

// ParkAfter tells busy legs from quiet ones. A leg whose reads come less
// than ParkAfter apart waits for the next bytes in Go's network poller,
// goroutine and all, for up to ParkAfter; any other leg parks as soon as
// it has read what is there (package quiet). A leg that is moving bytes
// thus never pays for parking, and one that is quiet costs a goroutine
// start per wake-up instead of a goroutine's stack for as long as it is
// quiet.
const ParkAfter = 100 * time.Millisecond

// spreadMax is the largest share of Keepalive by which a leg's pings go out
// early (timeout.Leg.Early).
const spreadMax = 0.1

// Watch is the liveness state of one leg. Times are nanoseconds since the
// connection started (monotonic); zero means never. Arm and Fired belong to
// the leg's reader goroutine; the rest may be called from anywhere.
type Watch struct {
	policy atomic.Pointer[timeout.Policy]
	reads  ReadDeadliner // sets the socket's read deadline
	waiter *quiet.Waiter // nil or not enabled: the reader never parks
	start  time.Time
	now    func() time.Time

	lastRead, lastWrite, lastActive atomic.Int64
	pingSent                        atomic.Int64
	closingAt                       atomic.Int64

	pings, pongs, rtt atomic.Int64 // keepalive pings sent, pongs back, last round trip (ns)

	pingSilence time.Duration // reader-owned: silence before the last ping
	readGap     int64         // reader-owned: time between the last two reads (ns)
	spread      float64       // share of Keepalive by which pings go early
	deadline    int64         // reader-owned: the read deadline currently set (ns since start; 0: none)
	wdeadline   int64         // guarded by the leg's write lock: the write deadline (ns since start)
	pingSeq     uint32        // reader-owned
	lingerArmed bool          // reader-owned: deadline includes the look-again after ParkAfter
	rearm       atomic.Bool   // consult the policy at the next Arm
}

// ReadDeadliner sets a connection's read deadline: the connection itself,
// or the reader that owns it (quiet.Reader, which must know).
type ReadDeadliner interface {
	SetReadDeadline(t time.Time) error
}

// Init starts watching a leg under policy, setting its read deadlines
// through reads. Silence counts from start. The leg's reader parks in
// waiter when it is quiet; waiter may be nil. The watch only times and
// decides: the socket's reads and writes are the leg's.
func (w *Watch) Init(reads ReadDeadliner, policy timeout.Policy, start time.Time, now func() time.Time, waiter *quiet.Waiter) {
	w.reads, w.start, w.now = reads, start, now
	if waiter != nil && waiter.Enabled() {
		w.waiter = waiter
	}
	w.spread = rand.Float64() * spreadMax
	w.policy.Store(&policy)
	w.lastRead.Store(1)
	w.lastWrite.Store(1)
	w.lastActive.Store(1)
}

// Policy returns the policy in force.
func (w *Watch) Policy() timeout.Policy { return *w.policy.Load() }

// SetPolicy puts a new policy in force (a config reload, or a learned
// keepalive interval) and wakes the reader to apply it.
func (w *Watch) SetPolicy(p timeout.Policy) {
	w.policy.Store(&p)
	w.rearm.Store(true)
	if !w.Closing() {
		w.reads.SetReadDeadline(time.Now())
	}
	w.wake()
}

// canPark reports whether the reader may park: it has a waiter, and the
// epoll set has not refused the socket.
func (w *Watch) canPark() bool { return w.waiter != nil && w.waiter.Enabled() }

// wake starts a parked reader (a running one is woken by its deadline).
func (w *Watch) wake() {
	if w.waiter != nil {
		w.waiter.Wake()
	}
}

// Silence returns how long the leg has been silent both ways.
func (w *Watch) Silence() time.Duration {
	last := max(w.lastRead.Load(), w.lastWrite.Load())
	return time.Duration(w.Now() - last)
}

// Now returns the time on the connection's clock.
func (w *Watch) Now() int64 { return int64(w.now().Sub(w.start)) }

func (w *Watch) at(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return w.start.Add(time.Duration(ns))
}

// Read records bytes read from the peer and returns how long the leg had
// been silent both ways before them, reading the clock once.
func (w *Watch) Read() time.Duration {
	now := w.Now()
	last := w.lastRead.Load()
	silence := time.Duration(now - max(last, w.lastWrite.Load()))
	w.readGap = now - last
	w.lastRead.Store(now)
	return silence
}

// WaitInPoller reports whether the reader should wait in the network poller when
// it has read everything there is: the leg cannot park, is closing, or is
// busy (its last two reads came less than ParkAfter apart). Otherwise the
// reader reads without waiting and parks when nothing is ready.
func (w *Watch) WaitInPoller() bool {
	return !w.canPark() || w.readGap < int64(ParkAfter) || w.Closing()
}

// Wrote records bytes written to the peer.
func (w *Watch) Wrote() { w.lastWrite.Store(w.Now()) }

// Active records a frame from the peer that counts against IdleTimeout.
func (w *Watch) Active() { w.lastActive.Store(w.Now()) }

// pingTag marks the gateway's own Ping payloads (tag + sequence number), so
// the Pongs that answer them can be told from Pongs the peers exchange.
var pingTag = rand.Uint32()

// NextPing records a keepalive Ping about to be sent and returns its
// payload.
func (w *Watch) NextPing() [8]byte {
	w.pingSeq++
	var p [8]byte
	binary.BigEndian.PutUint32(p[:4], pingTag)
	binary.BigEndian.PutUint32(p[4:], w.pingSeq)
	w.pingSilence = w.Silence()
	w.pingSent.Store(w.Now())
	w.pings.Add(1)
	return p
}

// PingSeq returns the sequence number of the gateway's own Ping that a
// Pong payload answers (1 for a leg's first Ping), or false for a Pong that
// answers no Ping of the gateway's.
func PingSeq(p []byte) (uint32, bool) {
	if len(p) != 8 || binary.BigEndian.Uint32(p[:4]) != pingTag {
		return 0, false
	}
	return binary.BigEndian.Uint32(p[4:]), true
}

// PingSilence is how long the leg was silent before the last ping: when
// that ping goes unanswered, the peer (or a middlebox) gave up within it.
func (w *Watch) PingSilence() time.Duration { return w.pingSilence }

// Pong looks at an (unmasked) Pong payload. own reports whether it answers
// one of the gateway's pings (and is to be consumed); rtt is its round trip
// when it answers the outstanding one.
func (w *Watch) Pong(p []byte) (own bool, rtt time.Duration) {
	if len(p) != 8 || binary.BigEndian.Uint32(p[:4]) != pingTag {
		return false, 0
	}
	w.pongs.Add(1)
	if binary.BigEndian.Uint32(p[4:]) != w.pingSeq {
		return true, 0 // a late answer to an earlier ping
	}
	sent := w.pingSent.Swap(0)
	w.rearm.Store(true) // the pong deadline is gone; the next ping may be sooner
	if sent == 0 {
		return true, 0
	}
	rtt = time.Duration(w.Now() - sent)
	w.rtt.Store(int64(rtt))
	return true, rtt
}

// Pings returns the keepalive counters: pings sent, pongs received, and the
// last round trip.
func (w *Watch) Pings() (pings, pongs int64, rtt time.Duration) {
	return w.pings.Load(), w.pongs.Load(), time.Duration(w.rtt.Load())
}

// Closing reports whether the leg is in its close grace period.
func (w *Watch) Closing() bool { return w.closingAt.Load() != 0 }

// StartClosing gives the peer until grace from now to finish closing; an
// earlier end already set stays.
func (w *Watch) StartClosing(grace time.Duration) {
	at := w.Now() + int64(grace)
	for {
		cur := w.closingAt.Load()
		if cur != 0 && cur <= at {
			return
		}
		if w.closingAt.CompareAndSwap(cur, at) {
			w.reads.SetReadDeadline(w.at(at))
			w.wake()
			return
		}
	}
}

// Arm sets the read deadline to the next policy event or the end of the
// close grace period, and reports true when that period is over.
func (w *Watch) Arm() bool {
	// A lingering reader must look again after ParkAfter (to park if
	// nothing came); a deadline set while it did not linger may be far off.
	linger := w.canPark() && w.WaitInPoller()
	for {
		var d time.Time
		ca := w.closingAt.Load()
		switch {
		case ca != 0:
			if w.Now() >= ca {
				return true
			}
			d = w.at(ca)
		case w.deadline != 0 && !w.rearm.Load() && (w.lingerArmed || !linger):
			// Traffic only moves the policy's next event later, so the
			// deadline already set fires early at worst and is re-armed
			// then: a busy leg is not re-armed on every read.
			return false
		default:
			w.rearm.Store(false)
			now := w.now()
			act, next := w.Policy().Decide(w.state(), now)
			d = next
			if act != timeout.None {
				d = now // due already (a parked leg's timer): Fired acts on it
			}
			if w.lingerArmed = linger; linger {
				if p := now.Add(ParkAfter); d.IsZero() || p.Before(d) {
					d = p
				}
			}
		}
		dn := int64(0)
		if !d.IsZero() {
			dn = max(int64(d.Sub(w.start)), 1)
		}
		if dn == w.deadline {
			return false
		}
		w.deadline = dn
		w.reads.SetReadDeadline(d)
		// StartClosing may have set its deadline between the load above
		// and ours: look again so the grace deadline is never overwritten.
		if ca != 0 || w.closingAt.Load() == 0 {
			return false
		}
	}
}

// Fired is called when the read deadline passed. It returns what the
// policy asks for; Closing (and an action of None) with over set means the
// close grace period is over.
func (w *Watch) Fired() (act timeout.Action, over bool) {
	w.deadline = 0 // a fired deadline must be re-armed
	if ca := w.closingAt.Load(); ca != 0 {
		return timeout.None, w.Now() >= ca
	}
	act, _ = w.Policy().Decide(w.state(), w.now())
	return act, false
}

// Park parks the leg's reader, with the policy's next event on a timer,
// unless it is closing or it lingers (Linger) and has read something in the
// last ParkAfter. It reports true when the reader is parked: the calling
// goroutine must then return without touching the leg, whose next turn runs
// in a new goroutine. The reader calls it when a read without waiting found
// nothing, or when Fired asked for nothing.
func (w *Watch) Park() bool {
	if !w.canPark() || w.Closing() {
		return false
	}
	if w.readGap < int64(ParkAfter) && w.Now()-w.lastRead.Load() < int64(ParkAfter) {
		return false
	}
	act, next := w.Policy().Decide(w.state(), w.now())
	if act != timeout.None {
		return false // due now: Arm makes Fired act on it
	}
	return w.waiter.Park(next)
}

func (w *Watch) state() timeout.State {
	return timeout.State{
		LastRead:   w.at(w.lastRead.Load()),
		LastWrite:  w.at(w.lastWrite.Load()),
		LastActive: w.at(w.lastActive.Load()),
		PingSent:   w.at(w.pingSent.Load()),
		Early:      time.Duration(w.spread * float64(w.policy.Load().Keepalive)),
	}
}

// WriteDeadline returns the write deadline to put on the socket before a
// write, WriteTimeout ahead, and false when the one already set will do:
// moving a deadline costs a timer update, so it moves only once more than
// half of it is used. The caller holds the leg's write lock (the socket
// write itself is the leg's, relay.Leg.Write).
func (w *Watch) WriteDeadline() (time.Time, bool) {
	wt := w.policy.Load().WriteTimeout
	if wt <= 0 {
		return time.Time{}, false
	}
	now := w.Now()
	if time.Duration(w.wdeadline-now) >= wt/2 {
		return time.Time{}, false
	}
	w.wdeadline = now + int64(wt)
	return w.at(w.wdeadline), true
}

// Times is a snapshot of a leg's activity for the admin view.
type Times struct {
	LastRead, LastWrite time.Time
	// Next is when the policy next acts on its own (a ping, or an idle or
	// pong-timeout close), and NextAction what it will be; zero when
	// nothing is scheduled.
	Next       time.Time
	NextAction timeout.Action
}

// Snapshot reads the leg's activity and its next scheduled event.
func (w *Watch) Snapshot() Times {
	st := w.state()
	now := w.now()
	t := Times{LastRead: st.LastRead, LastWrite: st.LastWrite}
	if w.Closing() {
		return t
	}
	p := w.Policy()
	act, next := p.Decide(st, now)
	if act != timeout.None {
		t.Next, t.NextAction = now, act
		return t
	}
	t.Next = next
	// Which event is it: step to it and ask again.
	if !next.IsZero() {
		t.NextAction, _ = p.Decide(st, next)
	}
	return t
}
