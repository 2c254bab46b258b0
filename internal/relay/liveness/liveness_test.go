package liveness

import (
	"net"
	"testing"
	"time"

	"github.com/caddy-websocket/caddy-websocket/internal/relay/quiet"
	"github.com/caddy-websocket/caddy-websocket/internal/tcptest"
	"github.com/caddy-websocket/caddy-websocket/internal/timeout"
)

// fakeClock is the injected clock: tests move it by hand.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time                   { return c.t }
func (c *fakeClock) add(d time.Duration)              { c.t = c.t.Add(d) }
func (c *fakeClock) since(t0 time.Time) time.Duration { return c.t.Sub(t0) }

func watch(t *testing.T, p timeout.Policy) (*Watch, *fakeClock) {
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	clk := &fakeClock{t: time.Date(2009, 12, 1, 0, 0, 0, 0, time.UTC)}
	var w Watch
	w.Init(a, p, clk.t, clk.now, nil)
	w.spread = 0 // exact ping times; TestPingsSpread covers the spread
	return &w, clk
}

func TestKeepaliveCycle(t *testing.T) {
	w, clk := watch(t, timeout.Policy{Keepalive: time.Second, PongTimeout: 500 * time.Millisecond})
	start := clk.t
	if s := w.Snapshot(); s.NextAction != timeout.Ping || clk.since(start) != 0 || s.Next.Sub(start) < 999*time.Millisecond {
		t.Fatalf("first event: %v at %v", s.NextAction, s.Next.Sub(start))
	}
	clk.add(time.Second + time.Millisecond)
	if act, over := w.Fired(); act != timeout.Ping || over {
		t.Fatalf("at 1s: %v %v", act, over)
	}
	p := w.NextPing()
	if w.PingSilence() < 999*time.Millisecond {
		t.Fatalf("silence before the ping: %v", w.PingSilence())
	}
	if s := w.Snapshot(); s.NextAction != timeout.ClosePong || s.Next.Sub(clk.t) != 500*time.Millisecond {
		t.Fatalf("after the ping: %v in %v", s.NextAction, s.Next.Sub(clk.t))
	}
	clk.add(20 * time.Millisecond)
	if own, _ := w.Pong([]byte("not ours")); own {
		t.Fatal("a foreign pong taken as ours")
	}
	own, rtt := w.Pong(p[:])
	if !own || rtt != 20*time.Millisecond {
		t.Fatalf("own pong: %v, rtt %v", own, rtt)
	}
	if pings, pongs, last := w.Pings(); pings != 1 || pongs != 1 || last != 20*time.Millisecond {
		t.Fatalf("counters %d %d %v", pings, pongs, last)
	}
	if s := w.Snapshot(); s.NextAction != timeout.Ping {
		t.Fatalf("after the pong: %v", s.NextAction)
	}
}

func TestPongTimeoutAndGrace(t *testing.T) {
	w, clk := watch(t, timeout.Policy{Keepalive: time.Second, PongTimeout: 500 * time.Millisecond})
	clk.add(time.Second + time.Millisecond)
	w.NextPing()
	clk.add(500 * time.Millisecond)
	if act, _ := w.Fired(); act != timeout.ClosePong {
		t.Fatalf("unanswered: %v", act)
	}
	w.StartClosing(2 * time.Second)
	if w.Arm() {
		t.Fatal("grace over at once")
	}
	w.StartClosing(5 * time.Second) // a later end does not extend it
	clk.add(2 * time.Second)
	if !w.Arm() {
		t.Fatal("grace not over after 2s")
	}
}

func TestSetPolicy(t *testing.T) {
	w, clk := watch(t, timeout.Policy{Keepalive: 20 * time.Second})
	w.SetPolicy(timeout.Policy{Keepalive: 300 * time.Millisecond, IdleTimeout: time.Minute})
	if got := w.Policy().Keepalive; got != 300*time.Millisecond {
		t.Fatalf("policy %v", got)
	}
	if s := w.Snapshot(); s.NextAction != timeout.Ping || s.Next.Sub(clk.t) > 301*time.Millisecond {
		t.Fatalf("next %v in %v", s.NextAction, s.Next.Sub(clk.t))
	}
	// Activity moves the events later; silence is measured both ways.
	clk.add(200 * time.Millisecond)
	w.Read()
	w.Wrote()
	if got := w.Silence(); got != 0 {
		t.Fatalf("silence right after traffic: %v", got)
	}
	clk.add(100 * time.Millisecond)
	if got := w.Silence(); got != 100*time.Millisecond {
		t.Fatalf("silence: %v", got)
	}
}

// TestPingsSpread checks that legs started together ping at different
// times, within the last tenth of the interval.
func TestPingsSpread(t *testing.T) {
	p := timeout.Policy{Keepalive: 10 * time.Second}
	seen := map[time.Duration]bool{}
	for range 50 {
		a, b := net.Pipe()
		clk := &fakeClock{t: time.Date(2009, 12, 1, 0, 0, 0, 0, time.UTC)}
		var w Watch
		w.Init(a, p, clk.t, clk.now, nil)
		s := w.Snapshot()
		d := s.Next.Sub(clk.t)
		if s.NextAction != timeout.Ping || d < 9*time.Second || d > 10*time.Second {
			t.Fatalf("first ping: %v after %v", s.NextAction, d)
		}
		seen[d] = true
		a.Close()
		b.Close()
	}
	if len(seen) < 40 {
		t.Fatalf("50 legs ping at only %d distinct times", len(seen))
	}
}

// TestLingerAndPark: a leg whose reads come close together lingers in the
// poller; a quiet one parks, with its next policy event on the timer, and
// never over an event that is already due.
func TestLingerAndPark(t *testing.T) {
	near, far := tcptest.Pair(t)
	turns := make(chan struct{}, 4)
	var pw quiet.Waiter
	if !pw.Init(near, func() { turns <- struct{}{} }) {
		t.Skip("parking is not supported here")
	}
	defer pw.Stop()
	clk := &fakeClock{t: time.Now()}
	var w Watch
	w.Init(near, timeout.Policy{Keepalive: time.Hour}, clk.t, clk.now, &pw)
	w.spread = 0

	if !w.WaitInPoller() {
		t.Fatal("a fresh leg does not linger (its first bytes usually follow the handshake)")
	}
	clk.add(10 * time.Millisecond)
	w.Read()
	if !w.WaitInPoller() || w.Park() {
		t.Fatal("a leg read 10ms after the last read parks")
	}
	clk.add(2 * ParkAfter)
	w.Read()
	if w.WaitInPoller() {
		t.Fatal("a leg read after a long gap lingers")
	}
	// The keepalive is due: parking now would sleep through it.
	clk.add(2 * time.Hour)
	if w.Park() {
		t.Fatal("parked over a due ping")
	}
	w.NextPing()
	w.Wrote()
	if !w.Park() {
		t.Fatal("a quiet leg with nothing due did not park")
	}
	far.Write([]byte("x"))
	select {
	case <-turns:
	case <-time.After(5 * time.Second):
		t.Fatal("a parked leg was not woken by bytes")
	}
	// Closing: never park, always wait in the poller (for the grace).
	w.StartClosing(time.Second)
	if w.Park() || !w.WaitInPoller() {
		t.Fatal("a closing leg parks")
	}
}
