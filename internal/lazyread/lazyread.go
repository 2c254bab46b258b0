// Package lazyread reads a connection without holding a buffer while it
// waits. A plain TCP connection is read through syscall.RawConn: the reader
// parks in the network poller with no buffer, and a pooled one is taken
// only for the read syscall that has bytes to return. Other connections
// (TLS, wrapped listeners) get a small buffer of their own.
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
// read and returned before the reader parks again, so their number follows
// the connections moving bytes right now, not the connections open.
const BufSize = 16 << 10

// ownBufSize is the buffer of a connection that cannot be read lazily.
const ownBufSize = 4 << 10

var pool = sync.Pool{New: func() any { b := make([]byte, BufSize); return &b }}

// Reader reads one connection. It is not safe for concurrent use.
type Reader struct {
	conn net.Conn
	raw  syscall.RawConn
	own  []byte
	fn   func(fd uintptr) bool
	slot *[]byte // the pooled buffer lent by the last Read
	n    int
	err  error
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
	r.own = make([]byte, ownBufSize)
}

// readFD is the RawConn callback: it gives the pooled buffer back when
// nothing is ready, so a parked reader holds none.
func (r *Reader) readFD(fd uintptr) bool {
	bp := pool.Get().(*[]byte)
	for {
		n, err := syscall.Read(int(fd), *bp)
		if err == syscall.EINTR {
			continue
		}
		if err == syscall.EAGAIN {
			pool.Put(bp)
			return false
		}
		if err != nil {
			pool.Put(bp)
			r.slot, r.n, r.err = nil, 0, os.NewSyscallError("read", err)
			return true
		}
		r.slot, r.n, r.err = bp, n, nil
		return true
	}
}

// Read waits for bytes and returns them; they stay valid until the next
// Read or Release. It returns io.EOF when the peer closed its side, and the
// connection's deadline errors as they are.
func (r *Reader) Read() ([]byte, error) {
	r.Release()
	if r.raw == nil {
		for {
			n, err := r.conn.Read(r.own)
			if n > 0 {
				return r.own[:n], nil
			}
			if err != nil {
				return nil, err
			}
			// 0, nil: a zero-length write on a pipe; read again.
		}
	}
	if err := r.raw.Read(r.fn); err != nil {
		return nil, err
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
