// Package stream makes a WebSocket carried on an HTTP/2 or HTTP/3 stream
// (RFC 8441, RFC 9220) look like a socket to the relay core: a net.Conn
// whose deadlines can be moved and fired again, as the leg loop uses them
// for its policy, and which parks like a socket (quiet.Source). HTTP/2's
// own stream deadlines cannot serve as they are: a read deadline that
// fires closes the stream's body for good, and a write deadline left set
// while the stream is idle resets it.
//
// Reads: one goroutine reads the request body (the client's bytes) — the
// handler's, which must stay in ServeHTTP for an HTTP/2 stream to live
// anyway, or for an HTTP/3 stream taken from the server one of its own —
// and hands each read over to the relay (Pump), waiting until the relay has
// taken it: the body's own flow control then holds the client back, as a
// socket's would. The relay reads the bytes handed over (Next), waiting
// for them with deadlines of its own while the leg is busy, and parks when
// it is quiet: the hand-over wakes it as an epoll event wakes a socket's
// reader. The pump waits with a small buffer and takes a pooled full-size
// one only while data keeps coming.
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
// A quiet stream thus costs that one goroutine and a small buffer, and no
// goroutine of the relay's.
package stream

import (
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/caddy-websocket/caddy-websocket/internal/relay/quiet"
)

const (
	// bufSize is the pump's buffer while data keeps coming: a DATA
	// frame's worth.
	bufSize = 16 << 10
	// idleBufSize is the buffer the pump waits with.
	idleBufSize = 512
)

var bufPool = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}

// Conn is the relay's end of a stream.
type Conn struct {
	local, remote net.Addr
	body          io.Reader
	w             io.Writer
	flush         func() error
	setWD         func(time.Time) error // under wmu, through the writer's wrappers
	interrupt     func(time.Time) error // from any goroutine, on the stream itself
	interruptRead func(time.Time) error // from any goroutine: ends the pump's wait in the body

	wmu sync.Mutex // one write at a time; Close waits for the one in flight

	dmu       sync.Mutex
	wdeadline time.Time
	writing   bool // a write is in flight: a new deadline goes to the stream now
	closed    bool

	// The read side: what the pump handed over, under rmu.
	rmu       sync.Mutex
	data      []byte    // handed over and not yet consumed (the pump's buffer)
	taken     bool      // data was returned by Next: consumed at the next Next or Consumed
	end       error     // io.EOF once the body ended
	rclosed   bool      // Close was called
	rdeadline time.Time // the relay's read deadline
	ready     func()    // a parked reader's wake (Arm), called once
	rtimer    *time.Timer

	avail chan struct{} // 1: bytes or the end handed over (a reader waiting in Next)
	kick  chan struct{} // 1: the read deadline moved (a reader waiting in Next)
	space chan struct{} // 1: the relay consumed what was handed over (the pump)
	stop  chan struct{} // closed by Close

	done chan struct{}
	once sync.Once
	// finish ends a stream taken from the HTTP/3 server (Serve), once
	// the relay closed the Conn; nil when the handler's return ends it.
	finish func()
}

var _ quiet.Source = (*Conn)(nil)

// New joins the stream of body (what the client sends, handed over by
// Pump) and w (what it receives, flushed after every write) to the
// returned Conn. setWriteDeadline is called around writes, by the writing
// goroutine; interrupt moves the write deadline of a write in flight from
// another goroutine, and interruptRead the read deadline of body, to end
// the pump's read once the Conn is closed. Done is closed once the relay
// has closed the Conn and no write of its is in flight: then the handler
// may return, which ends the stream.
func New(body io.Reader, w io.Writer, flush func() error, setWriteDeadline, interrupt, interruptRead func(time.Time) error, local, remote net.Addr) *Conn {
	return &Conn{
		local: local, remote: remote, body: body, w: w, flush: flush,
		setWD: setWriteDeadline, interrupt: interrupt, interruptRead: interruptRead,
		avail: make(chan struct{}, 1), kick: make(chan struct{}, 1), space: make(chan struct{}, 1),
		stop: make(chan struct{}), done: make(chan struct{}),
	}
}

// Pump hands what the client sends over to the relay, in the calling
// goroutine (the handler's), until the client ends its side or the relay
// closes the Conn. A reset stream or a client gone ends the body with an
// error; the relay then reads io.EOF.
func (c *Conn) Pump() {
	small := make([]byte, idleBufSize)
	buf := small
	var big *[]byte
	defer func() {
		if big != nil {
			bufPool.Put(big)
		}
	}()
	for {
		n, err := c.body.Read(buf)
		if n > 0 && !c.hand(buf[:n]) {
			return
		}
		if err != nil {
			c.rmu.Lock()
			c.end = io.EOF
			c.rmu.Unlock()
			c.signal()
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

// hand gives b to the relay and waits until it is consumed; false: the
// Conn was closed, and b never will be.
func (c *Conn) hand(b []byte) bool {
	c.rmu.Lock()
	if c.rclosed {
		c.rmu.Unlock()
		return false
	}
	c.data = b
	c.rmu.Unlock()
	c.signal()
	select {
	case <-c.space:
		return true
	case <-c.stop:
		return false
	}
}

// signal tells the relay's reader that bytes or the end are there: a
// reader waiting in Next, or a parked one (once).
func (c *Conn) signal() {
	c.rmu.Lock()
	ready := c.ready
	c.ready = nil
	c.rmu.Unlock()
	select {
	case c.avail <- struct{}{}:
	default:
	}
	if ready != nil {
		ready()
	}
}

// Next returns the bytes handed over and not yet consumed, which stay
// valid until the next Next or Consumed. When there are none it waits for
// them until the read deadline if wait is set, and otherwise returns
// quiet.ErrWouldBlock. It returns io.EOF once the client ended its side,
// and net.ErrClosed after Close.
func (c *Conn) Next(wait bool) ([]byte, error) {
	c.rmu.Lock()
	c.consumeLocked()
	for {
		switch {
		case c.rclosed:
			c.rmu.Unlock()
			return nil, net.ErrClosed
		case len(c.data) > 0:
			c.taken = true
			b := c.data
			c.rmu.Unlock()
			return b, nil
		case c.end != nil:
			c.rmu.Unlock()
			return nil, c.end
		}
		dl := c.rdeadline
		if !dl.IsZero() && !time.Now().Before(dl) {
			c.rmu.Unlock()
			return nil, os.ErrDeadlineExceeded
		}
		if !wait {
			c.rmu.Unlock()
			return nil, quiet.ErrWouldBlock
		}
		c.rmu.Unlock()
		c.await(dl)
		c.rmu.Lock()
	}
}

// await waits for a hand-over, a deadline change, the deadline dl or
// Close; the caller looks again at what changed. Only the reader calls it.
func (c *Conn) await(dl time.Time) {
	var fired <-chan time.Time
	if !dl.IsZero() {
		if c.rtimer == nil {
			c.rtimer = time.NewTimer(time.Until(dl))
		} else {
			c.rtimer.Reset(time.Until(dl))
		}
		defer c.rtimer.Stop()
		fired = c.rtimer.C
	}
	select {
	case <-c.avail:
	case <-c.kick:
	case <-fired:
	case <-c.stop:
	}
}

// consumeLocked drops the bytes the last Next returned and lets the pump
// read on.
func (c *Conn) consumeLocked() {
	if !c.taken {
		return
	}
	c.taken, c.data = false, nil
	select {
	case c.space <- struct{}{}:
	default:
	}
}

// Consumed says the bytes of the last Next are done with.
func (c *Conn) Consumed() {
	c.rmu.Lock()
	c.consumeLocked()
	c.rmu.Unlock()
}

// Arm has ready called once when bytes or the end are there: at once if
// they are already.
func (c *Conn) Arm(ready func()) {
	c.rmu.Lock()
	if len(c.data) > 0 || c.end != nil || c.rclosed {
		c.rmu.Unlock()
		ready()
		return
	}
	c.ready = ready
	c.rmu.Unlock()
}

// Disarm forgets the ready of Arm.
func (c *Conn) Disarm() {
	c.rmu.Lock()
	c.ready = nil
	c.rmu.Unlock()
}

// Read reads what the client sent, waiting for it until the read deadline.
func (c *Conn) Read(p []byte) (int, error) {
	b, err := c.Next(true)
	if err != nil {
		return 0, err
	}
	n := copy(p, b)
	c.rmu.Lock()
	if n < len(b) {
		c.data, c.taken = b[n:], false
	} else {
		c.consumeLocked()
	}
	c.rmu.Unlock()
	return n, nil
}

// SetReadDeadline sets the deadline of the reads to come, and of one
// waiting.
func (c *Conn) SetReadDeadline(t time.Time) error {
	c.rmu.Lock()
	c.rdeadline = t
	c.rmu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default:
	}
	return nil
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
	return c.SetReadDeadline(t)
}

// Close ends the relay's side: a write in flight is cut short (its
// deadline moved to now) and waited for, the pump's read of the body is
// ended, then Done is closed.
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
	c.rmu.Lock()
	c.rclosed = true
	c.data, c.taken, c.ready = nil, false, nil
	c.rmu.Unlock()
	close(c.stop)
	if c.interruptRead != nil {
		c.interruptRead(time.Now())
	}
	// The handler must not return while a write is in flight: Done is
	// closed once the write lock is free.
	c.wmu.Lock()
	c.once.Do(func() { close(c.done) })
	c.wmu.Unlock()
	if c.finish != nil {
		c.finish()
	}
	return nil
}

// Detached reports whether the stream was taken from its handler (HTTP/3):
// the handler may return at once, and Pump must run in a goroutine of its
// own.
func (c *Conn) Detached() bool { return c.finish != nil }

// Done is closed when the stream may end.
func (c *Conn) Done() <-chan struct{} { return c.done }

// LocalAddr is the server's address of the HTTP connection.
func (c *Conn) LocalAddr() net.Addr { return c.local }

// RemoteAddr is the client's address of the HTTP connection.
func (c *Conn) RemoteAddr() net.Addr { return c.remote }

// Serve answers an extended CONNECT with 200 and the headers already set
// on w, and returns the stream as a Conn. The caller must then run Pump,
// in the handler's goroutine and keep the handler running until Done; or,
// when the stream is Detached, in a goroutine of its own, and return.
//
// An HTTP/3 stream is taken from the server (quic-go's HTTPStreamer, as a
// hijack takes an HTTP/1.1 connection): the handler returns, with the
// request and the handler chain's stack, and the Conn reads and writes the
// stream itself, ending it as the server would have (CancelRead with
// H3_NO_ERROR, then FIN). HTTP/2 streams have no such hand-over.
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
	inner := innermost(w)
	if hs, ok := inner.(http3.HTTPStreamer); ok {
		str := hs.HTTPStream()
		c := New(str, str, func() error { return nil }, str.SetWriteDeadline, str.SetWriteDeadline, str.SetReadDeadline, local, ra)
		c.finish = func() {
			str.CancelRead(quic.StreamErrorCode(http3.ErrCodeNoError))
			str.Close()
		}
		return c, nil
	}
	irc := http.NewResponseController(inner)
	return New(r.Body, w, rc.Flush, rc.SetWriteDeadline, irc.SetWriteDeadline, irc.SetReadDeadline, local, ra), nil
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
