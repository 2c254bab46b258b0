package timeout

import (
	"testing"
	"time"
)

var t0 = time.Date(2009, 12, 1, 12, 0, 0, 0, time.UTC)

func at(d time.Duration) time.Time { return t0.Add(d) }

// simulate plays a leg forward in steps of 10ms, doing what the relay would
// do with each decision; answer says whether the peer answers pings (after
// rtt), and sends says when the peer sends a data frame. It returns the
// times of pings sent and the close action and time, if any.
func simulate(p Policy, until time.Duration, answer bool, rtt time.Duration, sends []time.Duration) (pings []time.Duration, closed Action, closedAt time.Duration) {
	l := State{LastRead: t0, LastWrite: t0, LastActive: t0}
	var pongDue time.Time
	for now := time.Duration(0); now <= until; now += 10 * time.Millisecond {
		tnow := at(now)
		for _, s := range sends {
			if s == now {
				l.LastRead, l.LastActive = tnow, tnow
			}
		}
		if !pongDue.IsZero() && !tnow.Before(pongDue) {
			l.LastRead, l.PingSent, pongDue = tnow, time.Time{}, time.Time{}
		}
		act, next := p.Decide(l, tnow)
		switch act {
		case Ping:
			pings = append(pings, now)
			l.PingSent, l.LastWrite = tnow, tnow
			if answer {
				pongDue = tnow.Add(rtt)
			}
			if _, next = p.Decide(l, tnow); !next.After(tnow) {
				panic("next wake-up not in the future after a ping")
			}
		case ClosePong, CloseIdle:
			return pings, act, now
		}
		if !next.IsZero() && next.Before(tnow) {
			panic("next wake-up in the past")
		}
	}
	return pings, None, 0
}

func TestKeepaliveAnswered(t *testing.T) {
	p := Policy{Keepalive: time.Second, PongTimeout: 500 * time.Millisecond}
	pings, closed, _ := simulate(p, 10*time.Second, true, 50*time.Millisecond, nil)
	if closed != None {
		t.Fatalf("closed: %v", closed)
	}
	// The ping itself is the last write, so silence counts from it.
	if len(pings) != 10 || pings[0] != time.Second || pings[1] != 2*time.Second {
		t.Fatalf("pings at %v", pings)
	}
}

func TestKeepaliveUnanswered(t *testing.T) {
	p := Policy{Keepalive: time.Second, PongTimeout: 500 * time.Millisecond}
	pings, closed, when := simulate(p, 10*time.Second, false, 0, nil)
	if closed != ClosePong || when != 1500*time.Millisecond || len(pings) != 1 {
		t.Fatalf("%v at %v after pings %v", closed, when, pings)
	}
}

func TestTrafficPostponesKeepalive(t *testing.T) {
	p := Policy{Keepalive: time.Second, PongTimeout: 500 * time.Millisecond}
	// The peer talks every 400ms but nothing is written to it: the leg is
	// silent towards the peer, so pings still go out every second.
	var sends []time.Duration
	for s := 400 * time.Millisecond; s < 5*time.Second; s += 400 * time.Millisecond {
		sends = append(sends, s)
	}
	pings, closed, _ := simulate(p, 5*time.Second, true, 10*time.Millisecond, sends)
	if closed != None || len(pings) != 5 {
		t.Fatalf("%v, pings %v", closed, pings)
	}
	// Both directions busy: no pings at all.
	l := State{LastRead: at(900 * time.Millisecond), LastWrite: at(950 * time.Millisecond), LastActive: at(900 * time.Millisecond)}
	if act, next := p.Decide(l, at(1500*time.Millisecond)); act != None || !next.Equal(at(1900*time.Millisecond)) {
		t.Fatalf("%v, next %v", act, next.Sub(t0))
	}
}

func TestIdleTimeout(t *testing.T) {
	p := Policy{Keepalive: 300 * time.Millisecond, PongTimeout: time.Second, IdleTimeout: 2 * time.Second}
	// Pongs keep the leg alive but don't count as activity.
	pings, closed, when := simulate(p, 10*time.Second, true, 10*time.Millisecond, []time.Duration{time.Second})
	if closed != CloseIdle || when != 3*time.Second {
		t.Fatalf("%v at %v", closed, when)
	}
	if len(pings) < 5 {
		t.Fatalf("pings %v", pings)
	}
}

func TestOff(t *testing.T) {
	var p Policy
	act, next := p.Decide(State{LastRead: t0, LastWrite: t0, LastActive: t0}, at(time.Hour))
	if act != None || !next.IsZero() {
		t.Fatalf("%v %v", act, next)
	}
	// Keepalive without a pong timeout keeps pinging.
	p = Policy{Keepalive: time.Second}
	pings, closed, _ := simulate(p, 5*time.Second, false, 0, nil)
	if closed != None || len(pings) != 5 {
		t.Fatalf("%v %v", closed, pings)
	}
}

func TestEarlySpreadsPings(t *testing.T) {
	p := Policy{Keepalive: 20 * time.Second, PongTimeout: 5 * time.Second}
	l := State{LastRead: t0, LastWrite: t0, LastActive: t0, Early: 1500 * time.Millisecond}
	if act, next := p.Decide(l, at(time.Second)); act != None || !next.Equal(at(18500*time.Millisecond)) {
		t.Fatalf("%v, next %v", act, next.Sub(t0))
	}
	if act, _ := p.Decide(l, at(18500*time.Millisecond)); act != Ping {
		t.Fatalf("at the early time: %v", act)
	}
	// Early never takes more than half the interval, whatever it is set to.
	l.Early = time.Hour
	if _, next := p.Decide(l, t0); !next.Equal(at(10 * time.Second)) {
		t.Fatalf("next %v", next.Sub(t0))
	}
}
