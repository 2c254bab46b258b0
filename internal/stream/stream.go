// Package stream makes a WebSocket carried on an HTTP/2 or HTTP/3 stream
// (RFC 8441, RFC 9220) look like a socket to the relay core: a net.Conn
// with deadlines that can be moved and fired again, as the leg loop uses
// them for its policy. HTTP/2's own stream deadlines cannot serve: one that
// fires closes the stream's body for good, and an idle write deadline
// resets the stream.
//
// The request body (the client's bytes) and the response writer (towards
// the client) are joined to one end of a net.Pipe by two goroutines; the
// relay reads and writes the other end. A stream thus costs, besides the
// handler goroutine that must stay in ServeHTTP for the stream to live, two
// goroutines and a read buffer while it is quiet: it cannot park, because
// the bytes arrive through the HTTP server's connection, not on a socket of
// their own.
package stream

import (
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// bufSize is the read buffer of a stream: a DATA frame's worth.
const bufSize = 16 << 10

// Conn is the relay's end of a stream.
type Conn struct {
	net.Conn
	local, remote net.Addr
	done          chan struct{}
	once          sync.Once
}

// New joins the stream of body (what the client sends) and w (what it
// receives, flushed after every write) to the returned Conn. Done is closed
// once the relay has closed the Conn and everything it wrote was flushed:
// then the handler may return, which ends the stream.
func New(body io.Reader, w io.Writer, flush func() error, local, remote net.Addr) *Conn {
	ours, theirs := net.Pipe()
	c := &Conn{Conn: ours, local: local, remote: remote, done: make(chan struct{})}
	go func() {
		// Client → relay. A reset stream or a client gone ends the body
		// with an error; the relay then sees its connection closed.
		buf := make([]byte, bufSize)
		for {
			n, err := body.Read(buf)
			if n > 0 {
				if _, werr := theirs.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				theirs.Close()
				return
			}
		}
	}()
	go func() {
		// Relay → client, in order; a write that blocks (flow control)
		// blocks the relay's pipe write, whose deadline is the leg's write
		// timeout.
		defer c.finish()
		buf := make([]byte, bufSize)
		for {
			n, err := theirs.Read(buf)
			if n > 0 {
				if _, werr := w.Write(buf[:n]); werr != nil {
					theirs.Close()
					return
				}
				if ferr := flush(); ferr != nil {
					theirs.Close()
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
	return c
}

func (c *Conn) finish() { c.once.Do(func() { close(c.done) }) }

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
	return New(r.Body, w, rc.Flush, local, ra), nil
}

type pipeAddr string

func (a pipeAddr) Network() string { return "stream" }
func (a pipeAddr) String() string  { return string(a) }
