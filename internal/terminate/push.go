package terminate

import (
	"errors"
	"sync"
	"sync/atomic"

	"github.com/caddy-websocket/caddy-websocket/internal/frame"
)

// PushBuffer bounds the bytes of pushed messages waiting for one client;
// past it the client is a slow consumer and is closed with 1011, as a
// client that does not read for its write timeout is.
const PushBuffer = 1 << 20

var (
	// ErrClosing: the client is closing; the message was not taken.
	ErrClosing = errors.New("the connection is closing")
	// ErrSlowConsumer: the push queue was full; the client is being closed.
	ErrSlowConsumer = errors.New("slow consumer: push queue full; the connection is being closed")
)

// pushQueue holds the messages pushed to the client (Push) until they are
// written. They go out before any message the client is sent after Push
// returned: whoever writes to the client next (a relayed message, or the
// goroutine Push starts when the queue was empty) writes them first, so a
// push answered before the backend spoke is not overtaken by it. No
// goroutine runs while the queue is empty.
type pushQueue struct {
	n       atomic.Int32 // len(items), read without mu on every relayed message
	mu      sync.Mutex
	items   []pushed
	size    int
	running bool
	dead    bool
}

type pushed struct {
	op frame.Opcode
	p  []byte // may be shared by every subscriber of a publish: read only
}

// Push queues a message for the client that did not come from its backend
// (the push API). It never blocks on the client; p must not change after.
func (c *Conn) Push(op frame.Opcode, p []byte) error {
	if c.isDone() {
		return ErrClosing
	}
	q := &c.push
	q.mu.Lock()
	defer q.mu.Unlock()
	switch {
	case q.dead:
		return ErrClosing
	case q.size+len(p) > PushBuffer && q.size > 0:
		q.killLocked()
		go c.Close(frame.CloseInternalError, "slow consumer: push queue full")
		return ErrSlowConsumer
	}
	q.items = append(q.items, pushed{op, p})
	q.size += len(p)
	q.n.Add(1)
	if !q.running {
		q.running = true
		go c.writePushes()
	}
	return nil
}

// kickPushes starts the push writer if pushes wait and none runs.
func (c *Conn) kickPushes() {
	q := &c.push
	q.mu.Lock()
	start := len(q.items) > 0 && !q.running && !q.dead
	q.running = q.running || start
	q.mu.Unlock()
	if start {
		go c.writePushes()
	}
}

// writePushes is the goroutine Push starts: it writes what is queued
// unless a relayed message took it first.
func (c *Conn) writePushes() {
	e := c.client.Load()
	e.wmu.Lock()
	// A client leg that may be resumed writes each push as it takes it.
	ok := c.takePushesLocked(e, true) && (e.resumable() || e.flushLocked())
	e.wmu.Unlock()
	if !ok {
		c.push.mu.Lock()
		c.push.killLocked()
		c.push.mu.Unlock()
	}
}

// killLocked drops what is queued and refuses what comes; the caller holds
// q.mu.
func (q *pushQueue) killLocked() {
	q.dead, q.items, q.size = true, nil, 0
	q.n.Store(0)
}

// pushesFirstLocked puts the queued pushes ahead of what the client leg
// writes next; the caller holds e.wmu. It reports false when they could
// not be written.
func (l *leg) pushesFirstLocked() bool {
	if l != l.c.client.Load() || l.c.push.n.Load() == 0 {
		return true
	}
	return l.c.takePushesLocked(l, false)
}

// takePushesLocked moves the queued pushes into e's held frames; the
// caller holds e.wmu and flushes them. last is set by the goroutine Push
// started, which ends with this call.
func (c *Conn) takePushesLocked(e *leg, last bool) bool {
	q := &c.push
	q.mu.Lock()
	items := q.items
	q.items, q.size = nil, 0
	q.n.Store(0)
	if last {
		q.running = false
	}
	if e.detached {
		// The session waits for its client: so do the pushes, for the
		// next client leg (Attach writes them).
		q.items = append(items, q.items...)
		for _, m := range q.items {
			q.size += len(m.p)
		}
		q.n.Store(int32(len(q.items)))
		q.mu.Unlock()
		return true
	}
	q.mu.Unlock()
	if e.resumable() && !e.closeSent {
		// Each on its own and recorded, as the relayed messages are (a
		// failed connection's wait for the next client leg).
		for _, m := range items {
			h, p, done := e.prepare(m.op, m.p)
			e.writeRecordedLocked(h, p, m.op, m.p)
			done()
		}
		return true
	}
	if e.closeSent || e.writeDead {
		return len(items) == 0
	}
	for _, m := range items {
		if !e.appendLocked(m.op, m.p) {
			return false
		}
	}
	return true
}
