// Waiter lets an idle connection wait with no goroutine of its own.
//
// A relay leg reads in a goroutine while bytes move. Once the leg has been
// quiet for a moment it parks: its goroutine exits, the socket waits in one
// epoll set shared by the whole process (oneshot, so an event is delivered
// once per park), and the leg's next policy event (a keepalive ping, a
// timeout) waits in a runtime timer, which costs no goroutine either. The
// first of readable bytes, the timer, or an explicit Wake runs the leg
// again, on a worker goroutine (runTurn); the others are then ignored, so a
// late or spurious wake only costs a look at the leg.
//
// An idle connection then holds its sockets and a few hundred bytes of
// state instead of two parked goroutine stacks. A stream (a Source) parks
// the same way, its hand-over of bytes standing for the epoll event. Where
// parking is not available (not Linux, not a TCP or TLS-over-TCP
// connection, not a Source) Init reports false and the leg keeps its
// goroutine, waiting in Go's network poller as before.

package quiet

import (
	"crypto/tls"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	running int32 = iota
	parked
	stopped
)

// Waiter parks one connection's reader. Park, Stop and Init belong to the
// goroutine running the reader; Wake may be called from anywhere.
type Waiter struct {
	raw   syscall.RawConn // the socket, or
	src   Source          // a connection that is told when it has bytes
	run   func()
	timer *time.Timer

	mu      sync.Mutex // orders Park and Stop: a woken reader may park again before the last Park returned
	state   atomic.Int32
	fd      int32
	pending atomic.Bool // a Wake came while running: don't park on it
	// armed: the oneshot registration is armed and its event has not come
	// since. The socket then had nothing to read when it was armed and has
	// had nothing since (the event would have come), so a turn started by
	// the timer or a Wake need not read it, and parking again need not
	// re-arm it: on a keepalive round that saves a read and an epoll_ctl.
	armed  atomic.Bool
	failed atomic.Bool // the epoll set refused the socket: never park
	reg    bool        // in the epoll set
}

// Init prepares w to park conn; run is run on a worker goroutine at each
// wake (runTurn) and must either park again or Stop. It reports false when conn
// cannot be parked.
func (w *Waiter) Init(conn net.Conn, run func()) bool {
	if src, ok := conn.(Source); ok {
		w.src, w.run, w.fd = src, run, -1
		return true
	}
	if tc, ok := conn.(*tls.Conn); ok {
		// Readiness of a TLS connection is its socket's: the reader asks
		// crypto/tls for what it holds before it parks (Reader).
		conn = tc.NetConn()
	}
	tc, ok := TCP(conn)
	if !ok || !supported {
		return false
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return false
	}
	w.raw, w.run, w.fd = raw, run, -1
	return true
}

// Enabled reports whether the connection can park: Init succeeded and the
// epoll set has not refused it.
func (w *Waiter) Enabled() bool { return w.run != nil && !w.failed.Load() }

// Park hands the reader's turn over: run will be started again when the
// connection is readable (or hung up), at at (when not zero), or on Wake,
// whichever comes first. It reports false when the caller must go on
// running instead: a Wake arrived while it was running, or the socket
// could not be put in the epoll set. After Park reports true the caller
// must not touch the leg again.
func (w *Waiter) Park(at time.Time) bool {
	if !w.Enabled() {
		return false
	}
	if w.pending.Swap(false) {
		return false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.state.Load() == stopped {
		return false
	}
	w.state.Store(parked)
	// From here a wake may start the next turn in another goroutine; what
	// follows touches only the timer, the epoll set and atomics.
	if !at.IsZero() {
		d := time.Until(at)
		if w.timer == nil {
			w.timer = time.AfterFunc(d, w.fire)
		} else {
			w.timer.Reset(d)
		}
	}
	if err := w.arm(); err != nil {
		// Without the epoll set readable bytes would go unnoticed: keep
		// the goroutine, now and from now on.
		w.failed.Store(true)
		return !w.state.CompareAndSwap(parked, running)
	}
	// A Wake between the Swap above and the state change saw the reader
	// running and left pending set: take the turn back.
	if w.pending.Load() && w.state.CompareAndSwap(parked, running) {
		w.pending.Store(false)
		return false
	}
	return true
}

// arm puts the socket in the epoll set, or re-arms its oneshot event
// unless it is still armed.
func (w *Waiter) arm() error {
	if w.reg && w.armed.Load() {
		return nil
	}
	// Armed before the syscall: the event it may report at once clears it
	// (ready), and must not find it cleared already.
	w.armed.Store(true)
	if w.src != nil {
		w.reg = true
		w.src.Arm(w.ready)
		return nil
	}
	var err error
	cerr := w.raw.Control(func(fd uintptr) {
		if !w.reg {
			w.fd = int32(fd)
			if err = add(w); err == nil {
				w.reg = true
			}
			return
		}
		err = rearm(int(fd))
	})
	if cerr == nil {
		cerr = err
	}
	if cerr != nil {
		w.armed.Store(false)
	}
	return cerr
}

// Wake starts the reader's next turn now if it is parked, or makes its next
// Park return false if it is running: something changed that it must look
// at (a new policy, a close).
func (w *Waiter) Wake() {
	if w.run == nil {
		return
	}
	w.pending.Store(true)
	w.fire()
}

// Unready reports that the socket has had nothing to read since the reader
// last found it empty: its readiness event is armed and has not come. A
// turn the timer or a Wake started can then skip the read. An event on its
// way still arrives: it clears armed, so the Park that follows re-arms, and
// a level-triggered re-arm reports the bytes at once.
func (w *Waiter) Unready() bool { return w.armed.Load() }

// ready is the epoll set's event for the socket: readable bytes or a
// hang-up. The oneshot registration is now disarmed.
func (w *Waiter) ready() {
	w.armed.Store(false)
	w.fire()
}

// fire starts a turn if the reader is parked. Readiness and timers call it
// without setting pending: a turn re-reads the socket and the clock anyway.
func (w *Waiter) fire() {
	if w.state.CompareAndSwap(parked, running) {
		runTurn(w.run)
	}
}

// Turns run on a few long-lived goroutines when one is free: a goroutine
// started per wake-up would begin with a 2 KiB stack and grow it (copy it)
// on every turn, as the leg loop needs more. Past maxIdleWorkers free ones
// a worker exits, so the pool follows the turns running at once, not the
// connections.
var (
	workQueue   = make(chan func()) // unbuffered: taken only by a free worker
	idleWorkers atomic.Int32
)

const maxIdleWorkers = 16

func runTurn(f func()) {
	select {
	case workQueue <- f:
	default:
		go worker(f)
	}
}

func worker(f func()) {
	for {
		f()
		if idleWorkers.Add(1) > maxIdleWorkers {
			idleWorkers.Add(-1)
			return
		}
		f = <-workQueue
		idleWorkers.Add(-1)
	}
}

// Stop takes the connection out of the epoll set and stops its timer; the
// reader calls it before closing the socket. Later wakes do nothing.
func (w *Waiter) Stop() {
	if w.run == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.state.Store(stopped)
	if w.timer != nil {
		w.timer.Stop()
	}
	if w.reg && w.src != nil {
		w.src.Disarm()
	} else if w.reg {
		w.raw.Control(func(fd uintptr) { remove(w, int(fd)) })
		w.reg = false
		w.armed.Store(false)
	}
}
