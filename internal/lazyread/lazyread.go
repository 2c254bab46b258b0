// Package lazyread reads a connection without holding a buffer while it
// waits. A plain TCP connection is read through syscall.RawConn: the reader
// waits in the network poller with no buffer, and a pooled one is taken
// only for the read syscall that has bytes to return. Other connections
// (TLS, wrapped listeners) get a small buffer of their own.
//
// A read that returns less than the buffer has almost always drained the
// socket, so the next Read without waiting reports ErrWouldBlock at once
// instead of spending a syscall to learn that nothing is there. (Almost: a
// read stops short at a FIN or urgent data. The caller then parks in a
// level-triggered epoll set, which reports such a socket at once. A Read
// that waits in Go's edge-triggered poller would miss it, so it always
// tries the socket first.)
package lazyread

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
)

// BufSize is the size of a pooled read buffer. Buffers are borrowed per
// read and returned before the reader waits again, so their number follows
// the connections moving bytes right now, not the connections open. It
// holds a 16 KiB message with its header in one read.
const BufSize = 32 << 10

// ErrWouldBlock is returned by Read(false) when no bytes are ready.
var ErrWouldBlock = errors.New("lazyread: no bytes ready")

// ownBufSize is the buffer of a connection that cannot be read lazily.
const ownBufSize = 4 << 10

var pool = sync.Pool{New: func() any { b := make([]byte, BufSize); return &b }}

// Reader reads one connection. It is not safe for concurrent use.
type Reader struct {
	conn net.Conn
	raw  syscall.RawConn
	own  *[]byte // the buffer of a connection that cannot be read lazily
	fn   func(fd uintptr) bool
	slot *[]byte // the pooled buffer lent by the last Read
	n    int
	err  error

	drained bool // the last read returned less than asked: nothing is likely left
	wait    bool // this Read waits in the poller when nothing is ready
	blocked bool // this Read found nothing ready and did not wait
}

// Init prepares r to read conn.
func (r *Reader) Init(conn net.Conn) {
	r.conn = conn
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
	if err := r.raw.Read(r.fn); err != nil {
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

// Release returns the buffer of the last Read to the pool early.
func (r *Reader) Release() {
	if r.slot != nil {
		pool.Put(r.slot)
		r.slot = nil
	}
}

// IsEOF reports whether err means the peer closed the connection.
func IsEOF(err error) bool { return errors.Is(err, io.EOF) }
