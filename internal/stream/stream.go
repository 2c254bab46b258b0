// Package stream makes a WebSocket carried on an HTTP/2 or HTTP/3 stream
// (RFC 8441, RFC 9220) look like a socket to the relay core: a net.Conn
// whose deadlines can be moved and fired again, as the leg loop uses them
// for its policy. HTTP/2's own stream deadlines cannot serve as they are:
// a read deadline that fires closes the stream's body for good, and a
// write deadline left set while the stream is idle resets it.
//
// Reads: the request body (the client's bytes) is copied into one end of
// a net.Pipe by a goroutine, and the relay reads the other end, with
// deadlines of its own. The copy waits with a small buffer and takes a
// pooled full-size one only while data keeps coming.
//
// Writes go straight to the response writer, flushed after each one, from
// the relay's goroutine; the relay's write deadline is handed to the
// stream only for the time of a write, so a write that the client's flow
// control holds up past it fails (the stream is reset), and an idle stream
// keeps no deadline. The response writer and its controller are used by
// one goroutine at a time (the wrappers a server puts around the stream's
// writer need not be safe for concurrent use); only to cut a blocked write
// short does another goroutine move the deadline, on the innermost writer
// (the HTTP/2 or HTTP/3 stream's own, which allows it).
//
// A stream thus costs, besides the handler goroutine that must stay in
// ServeHTTP for the stream to live, one goroutine and a small buffer while
// it is quiet: it cannot park, because its bytes arrive through the HTTP
// server's connection, not on a socket of their own.
package stream

import (
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"
)

const (
	// bufSize is the copy's buffer while data keeps coming: a DATA
	// frame's worth.
	bufSize = 16 << 10
	// idleBufSize is the buffer the copy waits with.
	idleBufSize = 512
)

var bufPool = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}

// Conn is the relay's end of a stream.
type Conn struct {
	net.Conn      // the read side: the relay's end of the pipe
	local, remote net.Addr
	w             io.Writer
	flush         func() error
	setWD         func(time.Time) error // under wmu, through the writer's wrappers
	interrupt     func(time.Time) error // from any goroutine, on the stream itself

	wmu sync.Mutex // one write at a time; Close waits for the one in flight

	dmu       sync.Mutex
	wdeadline time.Time
	writing   bool // a write is in flight: a new deadline goes to the stream now
	closed    bool

	done chan struct{}
	once sync.Once
}

// New joins the stream of body (what the client sends) and w (what it
// receives, flushed after every write) to the returned Conn.
// setWriteDeadline is called around writes, by the writing goroutine;
// interrupt moves the write deadline of a write in flight from another
// goroutine. Done is closed once the relay has closed the Conn and no
// write of its is in flight: then the handler may return, which ends the
// stream.
func New(body io.Reader, w io.Writer, flush func() error, setWriteDeadline, interrupt func(time.Time) error, local, remote net.Addr) *Conn {
	ours, theirs := net.Pipe()
	c := &Conn{Conn: ours, local: local, remote: remote, w: w, flush: flush, setWD: setWriteDeadline, interrupt: interrupt, done: make(chan struct{})}
	go copyBody(theirs, body)
	return c
}

// copyBody copies the client's bytes to the relay. A reset stream or a
// client gone ends the body with an error; the relay then sees its
// connection closed.
func copyBody(dst net.Conn, body io.Reader) {
	small := make([]byte, idleBufSize)
	buf := small
	var big *[]byte
	defer func() {
		if big != nil {
			bufPool.Put(big)
		}
	}()
	for {
		n, err := body.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			dst.Close()
			return
		}
		switch {
		case n == len(buf) && big == nil:
			// More is coming: read it in DATA frame sized pieces.
			big = bufPool.Get().(*[]byte)
			buf = *big
		case n < len(buf) && big != nil:
			// Caught up: wait with the small buffer again.
			bufPool.Put(big)
			big, buf = nil, small
		}
	}
}

// Write writes p to the client and flushes it, under the write deadline.
func (c *Conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.dmu.Lock()
	if c.closed {
		c.dmu.Unlock()
		return 0, net.ErrClosed
	}
	dl := c.wdeadline
	if !dl.IsZero() && !time.Now().Before(dl) {
		c.dmu.Unlock()
		return 0, os.ErrDeadlineExceeded
	}
	c.writing = true
	c.dmu.Unlock()
	if !dl.IsZero() {
		c.setWD(dl)
	}
	n, err := c.w.Write(p)
	if err == nil {
		err = c.flush()
	}
	c.dmu.Lock()
	c.writing = false
	dl = c.wdeadline
	c.dmu.Unlock()
	if !dl.IsZero() {
		c.setWD(time.Time{}) // an idle stream keeps no write deadline
	}
	if err != nil && !dl.IsZero() && !time.Now().Before(dl) {
		// The stream's deadline fired (it reset the stream): to the relay
		// that is a write timeout, as on a socket.
		err = errors.Join(os.ErrDeadlineExceeded, err)
	}
	return n, err
}

// SetWriteDeadline sets the deadline of the writes to come, and of the
// one in flight.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	c.dmu.Lock()
	c.wdeadline = t
	writing := c.writing
	c.dmu.Unlock()
	if writing {
		c.interrupt(t)
	}
	return nil
}

// SetDeadline sets both deadlines.
func (c *Conn) SetDeadline(t time.Time) error {
	c.SetWriteDeadline(t)
	return c.Conn.SetReadDeadline(t)
}

// Close ends the relay's side: a write in flight is cut short (its
// deadline moved to now) and waited for, then Done is closed.
func (c *Conn) Close() error {
	c.dmu.Lock()
	if c.closed {
		c.dmu.Unlock()
		return nil
	}
	c.closed = true
	writing := c.writing
	c.dmu.Unlock()
	if writing {
		c.interrupt(time.Now())
	}
	err := c.Conn.Close()
	// The handler must not return while a write is in flight: Done is
	// closed once the write lock is free.
	c.wmu.Lock()
	c.once.Do(func() { close(c.done) })
	c.wmu.Unlock()
	return err
}

// Done is closed when the stream may end.
func (c *Conn) Done() <-chan struct{} { return c.done }

// LocalAddr is the server's address of the HTTP connection.
func (c *Conn) LocalAddr() net.Addr { return c.local }

// RemoteAddr is the client's address of the HTTP connection.
func (c *Conn) RemoteAddr() net.Addr { return c.remote }

// Serve answers an extended CONNECT with 200 and the headers already set
// on w, and returns the stream as a Conn; the caller must keep the handler
// running until Done.
func Serve(w http.ResponseWriter, r *http.Request) (*Conn, error) {
	rc := http.NewResponseController(w)
	// The server's own deadlines would otherwise cut the stream off.
	rc.SetReadDeadline(time.Time{})
	rc.SetWriteDeadline(time.Time{})
	w.WriteHeader(http.StatusOK)
	if err := rc.Flush(); err != nil {
		return nil, err
	}
	// HTTP/2 and HTTP/3 are full duplex already; the call matters to
	// servers that would otherwise stop reading the body once the
	// response started.
	rc.EnableFullDuplex()
	var local net.Addr = pipeAddr("")
	if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok && a != nil {
		local = a
	}
	remote, _ := net.ResolveTCPAddr("tcp", r.RemoteAddr)
	var ra net.Addr = remote
	if remote == nil {
		ra = pipeAddr(r.RemoteAddr)
	}
	inner := http.NewResponseController(innermost(w))
	return New(r.Body, w, rc.Flush, rc.SetWriteDeadline, inner.SetWriteDeadline, local, ra), nil
}

// innermost is the writer under w's wrappers (those that Unwrap, as
// http.ResponseController looks through them).
func innermost(w http.ResponseWriter) http.ResponseWriter {
	for {
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			return w
		}
		w = u.Unwrap()
	}
}

type pipeAddr string

func (a pipeAddr) Network() string { return "stream" }
func (a pipeAddr) String() string  { return string(a) }
