// Reader reads a connection without holding a buffer while it waits. A plain TCP connection is read through syscall.RawConn: the reader
// waits in the network poller with no buffer, and a pooled one is taken
// only for the read syscall that has bytes to return. A TLS connection over
// TCP borrows a pooled buffer for each read, and can be read without
// waiting: crypto/tls is asked for what it already holds, and the socket is
// peeked for more (see readTLS). A Source (an HTTP/2 or HTTP/3 stream)
// lends the bytes handed over to it. Other connections (wrapped listeners,
// pipes) get a small buffer of their own and always wait.
//
// A read that returns less than the buffer has almost always drained the
// socket, so the next Read without waiting reports ErrWouldBlock at once
// instead of spending a syscall to learn that nothing is there. (Almost: a
// read stops short at a FIN or urgent data. The caller then parks in a
// level-triggered epoll set, which reports such a socket at once. A Read
// that waits in Go's edge-triggered poller would miss it, so it always
// tries the socket first.)

package quiet

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// BufSize is the size of a pooled read buffer. Buffers are borrowed per
// read and returned before the reader waits again, so their number follows
// the connections moving bytes right now, not the connections open. It
// holds a 16 KiB message with its header in one read.
const BufSize = 32 << 10

// ErrWouldBlock is returned by Read(false) when no bytes are ready.
var ErrWouldBlock = errors.New("quiet: no bytes ready")

// ownBufSize is the buffer of a connection that cannot be read lazily.
const ownBufSize = 4 << 10

var pool = sync.Pool{New: func() any { b := make([]byte, BufSize); return &b }}

// Reader reads one connection. It is not safe for concurrent use.
type Reader struct {
	conn net.Conn
	src  Source // a connection that hands over its bytes (nil: conn is read)
	raw  syscall.RawConn
	tls  *tls.Conn // a TLS connection over raw's socket

	dmu      sync.Mutex // orders SetReadDeadline and the reads that use it
	deadline time.Time  // the read deadline the owner set
	probing  bool       // a TLS read that does not wait holds the deadline in the past
	// A plain TCP socket gets the owner's deadline only while a Read waits
	// in the poller (waiting); a Read that does not wait checks it itself.
	// Moving a socket's deadline is a runtime timer update, and a parked
	// leg moves its own deadline twice per keepalive round.
	applied time.Time // the deadline on the socket
	own     *[]byte   // the buffer of a connection that cannot be read lazily
	fn      func(fd uintptr) bool
	slot    *[]byte // the pooled buffer lent by the last Read
	n       int
	err     error

	waiting bool // a Read waits in the poller (applied is the owner's deadline)
	drained bool // the last read returned less than asked: nothing is likely left
	wait    bool // this Read waits in the poller when nothing is ready
	blocked bool // this Read found nothing ready and did not wait
}

// Init prepares r to read conn.
func (r *Reader) Init(conn net.Conn) {
	r.conn = conn
	if src, ok := conn.(Source); ok {
		r.src = src
		return
	}
	if tc, ok := conn.(*tls.Conn); ok {
		if tcp, ok := TCP(tc.NetConn()); ok {
			if raw, err := tcp.SyscallConn(); err == nil {
				r.tls, r.raw = tc, raw
				return
			}
		}
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		if raw, err := tc.SyscallConn(); err == nil {
			r.raw = raw
			r.fn = r.readFD
			return
		}
	}
	own := make([]byte, ownBufSize)
	r.own = &own
}

// readFD is the RawConn callback: it gives the pooled buffer back when
// nothing is ready, so a parked reader holds none.
func (r *Reader) readFD(fd uintptr) bool {
	if r.drained {
		r.drained = false
		if !r.wait {
			r.blocked = true
			return true
		}
	}
	bp := pool.Get().(*[]byte)
	for {
		n, err := syscall.Read(int(fd), *bp)
		if err == syscall.EINTR {
			continue
		}
		if err == syscall.EAGAIN {
			pool.Put(bp)
			if !r.wait {
				r.blocked = true
				return true
			}
			return false
		}
		if err != nil {
			pool.Put(bp)
			r.slot, r.n, r.err = nil, 0, os.NewSyscallError("read", err)
			return true
		}
		r.slot, r.n, r.err = bp, n, nil
		r.drained = n > 0 && n < len(*bp)
		return true
	}
}

// Read returns the bytes ready on the connection; they stay valid until the
// next Read or Release. When none are ready it waits for them if wait is
// set (until the connection's read deadline), and otherwise returns
// ErrWouldBlock; a connection that cannot be read lazily always waits. It
// returns io.EOF when the peer closed its side, and the connection's
// deadline errors as they are.
func (r *Reader) Read(wait bool) ([]byte, error) {
	r.Release()
	if r.src != nil {
		return r.src.Next(wait)
	}
	if r.tls != nil {
		return r.readTLS(wait)
	}
	if r.raw == nil {
		for {
			n, err := r.conn.Read(*r.own)
			if n > 0 {
				return (*r.own)[:n], nil
			}
			if err != nil {
				return nil, err
			}
			// 0, nil: a zero-length write on a pipe; read again.
		}
	}
	r.wait, r.blocked = wait, false
	if !r.applyDeadline(wait) {
		return nil, os.ErrDeadlineExceeded
	}
	err := r.raw.Read(r.fn)
	if wait {
		r.dmu.Lock()
		r.waiting = false
		r.dmu.Unlock()
	}
	if err != nil {
		return nil, err
	}
	if r.blocked {
		return nil, ErrWouldBlock
	}
	if r.err != nil {
		return nil, r.err
	}
	if r.n == 0 {
		r.Release()
		return nil, io.EOF
	}
	return (*r.slot)[:r.n], nil
}

// Empty is what Read(false) returns on a connection known to have nothing
// ready (a parked reader's socket whose readiness event has not come,
// Waiter.Unready), without a syscall: ErrWouldBlock, or
// os.ErrDeadlineExceeded once the read deadline has passed, as the socket
// would say. It gives back the buffer of the last Read.
func (r *Reader) Empty() error {
	r.Release()
	r.drained = false
	if r.deadlinePassed() {
		return os.ErrDeadlineExceeded
	}
	return ErrWouldBlock
}

// applyDeadline readies a plain TCP Read: one that waits gets the owner's
// deadline on the socket; one that does not reports false once it has
// passed, as the socket would (and clears a deadline a wait left behind,
// which would fire on it).
func (r *Reader) applyDeadline(wait bool) bool {
	r.dmu.Lock()
	defer r.dmu.Unlock()
	if wait {
		r.waiting = true
	} else if r.passedLocked() {
		return false
	}
	if !r.applied.Equal(r.deadline) && (wait || !r.applied.IsZero()) {
		r.applied = r.deadline
		r.conn.SetReadDeadline(r.deadline)
	}
	return true
}

// SetReadDeadline sets the connection's read deadline. The owner of a
// Reader sets deadlines through it (from any goroutine), so that a TLS read
// that does not wait can put them back, and a plain TCP socket gets them
// only while a Read waits.
func (r *Reader) SetReadDeadline(t time.Time) error {
	r.dmu.Lock()
	defer r.dmu.Unlock()
	r.deadline = t
	if r.probing {
		return nil // put in force when the probe ends
	}
	if r.fn != nil && !r.waiting {
		return nil // applyDeadline
	}
	r.applied = t
	return r.conn.SetReadDeadline(t)
}

// SetWriteDeadline sets the connection's write deadline.
func (r *Reader) SetWriteDeadline(t time.Time) error { return r.conn.SetWriteDeadline(t) }

// readTLS reads a TLS connection into a pooled buffer. Without waiting, it
// first asks crypto/tls with a deadline in the past: a record it already
// holds is decrypted and returned without touching the socket (an expired
// deadline fails before any syscall, and a timeout does not break a
// tls.Conn). If it holds none, the socket is peeked: bytes there (or a
// hang-up) are read with the owner's deadline, which then waits at most for
// the rest of a record; an empty socket is ErrWouldBlock, and the caller
// can wait for it in an epoll set, as for plain TCP. Bytes crypto/tls keeps
// of an incomplete record do not matter: the rest must come on the socket.
func (r *Reader) readTLS(wait bool) ([]byte, error) {
	bp := pool.Get().(*[]byte)
	if !wait {
		r.dmu.Lock()
		r.probing = true
		r.conn.SetReadDeadline(past)
		r.dmu.Unlock()
		n, err := r.tls.Read(*bp)
		r.dmu.Lock()
		r.probing = false
		r.conn.SetReadDeadline(r.deadline)
		r.dmu.Unlock()
		if n > 0 {
			r.slot, r.n = bp, n
			return (*bp)[:n], nil
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			pool.Put(bp)
			return nil, err
		}
		if !r.socketReady() {
			pool.Put(bp)
			if r.deadlinePassed() {
				// As a socket read would say: the owner's timer is due.
				return nil, os.ErrDeadlineExceeded
			}
			return nil, ErrWouldBlock
		}
	}
	for {
		n, err := r.tls.Read(*bp)
		if n > 0 {
			r.slot, r.n = bp, n
			return (*bp)[:n], nil
		}
		if err != nil {
			pool.Put(bp)
			return nil, err
		}
		// 0, nil: an empty record; read on.
	}
}

// deadlinePassed reports whether the owner's read deadline has passed.
func (r *Reader) deadlinePassed() bool {
	r.dmu.Lock()
	defer r.dmu.Unlock()
	return r.passedLocked()
}

// passedLocked is deadlinePassed with dmu held.
func (r *Reader) passedLocked() bool {
	return !r.deadline.IsZero() && !time.Now().Before(r.deadline)
}

// past is a read deadline that has expired.
var past = time.Unix(1, 0)

// socketReady reports whether the TLS connection's socket has bytes to
// read, or a hang-up or error to report, without reading them.
func (r *Reader) socketReady() bool {
	ready := true
	var b [1]byte
	r.raw.Control(func(fd uintptr) {
		for {
			_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			if err == syscall.EINTR {
				continue
			}
			ready = err != syscall.EAGAIN
			return
		}
	})
	return ready
}

// Release returns the buffer of the last Read to the pool early.
func (r *Reader) Release() {
	if r.src != nil {
		r.src.Consumed()
		return
	}
	if r.slot != nil {
		pool.Put(r.slot)
		r.slot = nil
	}
}
