package quiet

import (
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/caddy-websocket/caddy-websocket/internal/tcptest"
)

// newWaiter returns a waiter on a fresh connection whose turns are reported
// on the channel.
func newWaiter(t *testing.T) (*Waiter, net.Conn, chan struct{}) {
	near, far := tcptest.Pair(t)
	turns := make(chan struct{}, 16)
	w := new(Waiter)
	if !w.Init(near, func() { turns <- struct{}{} }) {
		t.Skip("parking is not supported here")
	}
	t.Cleanup(w.Stop)
	return w, far, turns
}

func expectTurn(t *testing.T, turns chan struct{}, why string) {
	t.Helper()
	select {
	case <-turns:
	case <-time.After(5 * time.Second):
		t.Fatalf("no turn after %s", why)
	}
}

func expectNoTurn(t *testing.T, turns chan struct{}, why string) {
	t.Helper()
	select {
	case <-turns:
		t.Fatalf("a turn after %s", why)
	case <-time.After(100 * time.Millisecond):
	}
}

func TestBytesWake(t *testing.T) {
	w, far, turns := newWaiter(t)
	if !w.Park(time.Time{}) {
		t.Fatal("did not park")
	}
	expectNoTurn(t, turns, "nothing")
	far.Write([]byte("x"))
	expectTurn(t, turns, "bytes")
	// The event is oneshot: the unread byte wakes only the next Park.
	expectNoTurn(t, turns, "the same bytes")
	if !w.Park(time.Time{}) {
		t.Fatal("did not park again")
	}
	expectTurn(t, turns, "bytes still unread")
}

func TestHangUpWakes(t *testing.T) {
	w, far, turns := newWaiter(t)
	w.Park(time.Time{})
	far.Close()
	expectTurn(t, turns, "the peer closed")
}

func TestTimerWakes(t *testing.T) {
	w, _, turns := newWaiter(t)
	start := time.Now()
	w.Park(start.Add(150 * time.Millisecond))
	expectTurn(t, turns, "the timer")
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Fatalf("woke after %v, before the timer", d)
	}
	// A wake by bytes leaves a timer behind; it finds the reader running.
	w.Park(time.Now().Add(200 * time.Millisecond))
	w.Wake()
	expectTurn(t, turns, "Wake")
	expectNoTurn(t, turns, "a stale timer")
	time.Sleep(200 * time.Millisecond)
	expectNoTurn(t, turns, "a stale timer")
}

func TestWakeWhileRunning(t *testing.T) {
	w, _, turns := newWaiter(t)
	w.Wake() // the reader is running: its next Park must not park
	if w.Park(time.Time{}) {
		t.Fatal("parked over a pending wake")
	}
	if !w.Park(time.Time{}) {
		t.Fatal("a wake counted twice")
	}
	w.Wake()
	expectTurn(t, turns, "Wake")
}

func TestStop(t *testing.T) {
	w, far, turns := newWaiter(t)
	w.Park(time.Now().Add(50 * time.Millisecond))
	w.Wake()
	expectTurn(t, turns, "Wake")
	w.Stop()
	far.Write([]byte("x"))
	w.Wake()
	expectNoTurn(t, turns, "Stop")
	time.Sleep(100 * time.Millisecond)
	expectNoTurn(t, turns, "Stop (timer)")
	if w.Park(time.Time{}) {
		t.Fatal("parked after Stop")
	}
}

func TestNotTCP(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	var w Waiter
	if w.Init(a, func() {}) || w.Enabled() || w.Park(time.Time{}) {
		t.Fatal("a pipe cannot park")
	}
	w.Wake()
	w.Stop()
}

// TestParkedHoldsNoGoroutine is the point of the package: many parked
// connections, no goroutine each, and every one still wakes.
func TestParkedHoldsNoGoroutine(t *testing.T) {
	const n = 300
	ws := make([]*Waiter, n)
	fars := make([]net.Conn, n)
	turns := make(chan struct{}, n)
	for i := range ws {
		near, far := tcptest.Pair(t)
		ws[i], fars[i] = new(Waiter), far
		if !ws[i].Init(near, func() { turns <- struct{}{} }) {
			t.Skip("parking is not supported here")
		}
		t.Cleanup(ws[i].Stop)
	}
	before := runtime.NumGoroutine()
	for _, w := range ws {
		if !w.Park(time.Now().Add(time.Hour)) {
			t.Fatal("did not park")
		}
	}
	if g := runtime.NumGoroutine(); g > before+2 {
		t.Fatalf("%d goroutines for %d parked connections (%d before)", g, n, before)
	}
	for _, f := range fars {
		f.Write([]byte("x"))
	}
	for i := 0; i < n; i++ {
		expectTurn(t, turns, "bytes")
	}
}

// TestUnready: a turn the timer started knows the socket is still empty
// (no read needed) and parks again without re-arming; bytes that come
// while it runs are not lost.
func TestUnready(t *testing.T) {
	w, far, turns := newWaiter(t)
	if w.Unready() {
		t.Fatal("unready before the first park")
	}
	w.Park(time.Now().Add(50 * time.Millisecond))
	expectTurn(t, turns, "the timer")
	if !w.Unready() {
		t.Fatal("a timer's turn does not know the socket is empty")
	}
	// Parks again on the registration still armed: bytes wake it.
	if !w.Park(time.Time{}) {
		t.Fatal("did not park")
	}
	far.Write([]byte("x"))
	expectTurn(t, turns, "bytes after a park that did not re-arm")
	if w.Unready() {
		t.Fatal("unready after the bytes' event")
	}
	// Bytes that come while the turn runs: their event finds it running,
	// and the next Park re-arms, which reports them at once.
	w.Park(time.Now().Add(30 * time.Millisecond))
	expectTurn(t, turns, "the timer")
	far.Write([]byte("y"))
	deadline := time.Now().Add(5 * time.Second)
	for w.Unready() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if w.Unready() {
		t.Fatal("the bytes' event did not come while running")
	}
	if !w.Park(time.Time{}) {
		t.Fatal("did not park")
	}
	expectTurn(t, turns, "bytes that came while running")
}
