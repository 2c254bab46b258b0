// Package timeout holds the gateway's idle-timeout policies as plain Go:
// given what has been seen on one leg of a connection and the time now, a
// Policy says what to do (nothing, send a Ping, or close) and when to look
// again. It reads no clock and starts no timer, so the relays own the timers
// (read deadlines) and tests drive it with any times they like.
package timeout

import "time"

// Policy is the idle-timeout policy for one leg of a connection (the client
// side or the backend side). A zero duration turns that part off.
type Policy struct {
	// Keepalive sends a Ping after this much silence on the leg: no frame
	// received from the peer, or none sent to it, for this long. Both count
	// because middleboxes and peers time out on either direction.
	Keepalive time.Duration
	// PongTimeout closes the leg when the gateway's Ping is not answered
	// within this long.
	PongTimeout time.Duration
	// IdleTimeout closes the leg after this long without a frame from the
	// peer. Answers to the gateway's own pings do not count, so keepalive
	// does not defeat it.
	IdleTimeout time.Duration
	// WriteTimeout closes the leg when a write to the peer makes no progress
	// for this long: a peer that stops reading cannot hold the gateway's
	// memory or the other leg hostage. Decide does not use it; the relays
	// apply it as a write deadline.
	WriteTimeout time.Duration
}

// State is what has been observed on one leg. Zero times mean "never".
type State struct {
	// LastRead is when the last bytes arrived from the peer (any frame,
	// including Pongs to the gateway's pings). Starts at the handshake.
	LastRead time.Time
	// LastWrite is when bytes were last written to the peer, by the relay
	// or by the gateway itself.
	LastWrite time.Time
	// LastActive is when the peer last sent a frame that the gateway
	// forwarded; IdleTimeout counts from here.
	LastActive time.Time
	// PingSent is when the outstanding gateway Ping was sent, zero when no
	// Ping awaits its Pong.
	PingSent time.Time
	// Early lets the keepalive Ping go out this much before Keepalive: a
	// share of it drawn at random per connection, so that connections
	// opened together (a restart, a reload, a load test) don't all ping in
	// the same instant, waking every idle connection at once. Early is
	// always safe: a Ping a little before the interval still comes before
	// any middlebox's idle timeout.
	Early time.Duration
}

// Action is what a Policy asks the relay to do now.
type Action int

// The actions, in the order Decide considers them.
const (
	None      Action = iota
	ClosePong        // the peer did not answer a Ping in time
	CloseIdle        // the peer sent nothing for IdleTimeout
	Ping             // the leg has been silent for Keepalive
)

func (a Action) String() string {
	switch a {
	case ClosePong:
		return "pong timeout"
	case CloseIdle:
		return "idle timeout"
	case Ping:
		return "ping"
	}
	return "none"
}

// Decide returns what to do on a leg at now, and when to call Decide again
// if nothing else happens first (zero: never). When it returns Ping, the
// caller sends the Ping, sets PingSent and LastWrite, and calls Decide again
// for the next wake-up; after a close action there is no next wake-up.
func (p Policy) Decide(l State, now time.Time) (Action, time.Time) {
	var next time.Time
	wake := func(t time.Time) {
		if next.IsZero() || t.Before(next) {
			next = t
		}
	}
	if !l.PingSent.IsZero() && p.PongTimeout > 0 {
		t := l.PingSent.Add(p.PongTimeout)
		if !now.Before(t) {
			return ClosePong, time.Time{}
		}
		wake(t)
	}
	if p.IdleTimeout > 0 {
		t := l.LastActive.Add(p.IdleTimeout)
		if !now.Before(t) {
			return CloseIdle, time.Time{}
		}
		wake(t)
	}
	// With PongTimeout off an unanswered Ping must not stop the next one.
	if p.Keepalive > 0 && (l.PingSent.IsZero() || p.PongTimeout <= 0) {
		silentSince := l.LastRead
		if l.LastWrite.Before(silentSince) {
			silentSince = l.LastWrite
		}
		// An unanswered Ping (with PongTimeout off) restarts the count, or
		// a peer that never answers would be pinged on every wake-up.
		if l.PingSent.After(silentSince) {
			silentSince = l.PingSent
		}
		t := silentSince.Add(p.Keepalive - min(l.Early, p.Keepalive/2))
		if !now.Before(t) {
			return Ping, next
		}
		wake(t)
	}
	return None, next
}
