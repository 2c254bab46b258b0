package relay

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"time"

	"github.com/caddy-websocket/caddy-websocket/internal/relay/liveness"
	"github.com/caddy-websocket/caddy-websocket/internal/relay/quiet"
	"github.com/caddy-websocket/caddy-websocket/internal/timeout"
)

// ErrGraceOver is the reason a leg's reader gives when it stopped because
// the close grace period ended (or the closing handshake completed).
var ErrGraceOver = errors.New("close grace period over")

// Mode is what a mode does with one leg. The leg's reader calls it, one
// call at a time; only Feed may run long (it relays what it is given).
type Mode interface {
	// Feed handles bytes read from the leg, in order. It may modify b,
	// which is only valid during the call.
	Feed(b []byte)
	// Ping sends the leg's peer a keepalive Ping: the policy says it is due.
	Ping()
	// Timeout ends the connection for the policy: timeout.CloseIdle (no
	// frame from the peer for too long) or timeout.ClosePong (a keepalive
	// went unanswered; the leg then closes at once and Dropped follows).
	Timeout(act timeout.Action)
	// Dropped reports that the peer ended the connection on its own
	// (vanished or stopped answering) after being silent both ways for
	// silence: what an idle-timeout learner learns from.
	Dropped(silence time.Duration)
	// Exit is called once, as the reader stops for good, with the socket
	// closed: err is ErrGraceOver, or why the read failed.
	Exit(err error)
}

// BeforeCloser is a Mode that reads its socket's state as its reader stops,
// before the socket is closed: terminate mode's resume asks the kernel how
// much of what it wrote the client acknowledged.
type BeforeCloser interface {
	BeforeClose()
}

// Leg is one WebSocket connection of a relayed pair, as the relay core
// sees it: a socket, its reader, its liveness policy, its close state and
// its counters. A leg's socket may be anything a net.Conn can be; when it
// is a plain TCP socket the quiet reader parks (package quiet) and holds no
// goroutine, otherwise it waits in Go's poller with one.
type Leg struct {
	Live liveness.Watch
	// Bytes and Msgs count what the peer sent; the mode counts messages.
	Bytes, Msgs atomic.Int64
	// Silence is the silence both ways before the last read (reader-owned).
	Silence time.Duration

	conn       net.Conn
	h          Mode
	rd         quiet.Reader
	park       quiet.Waiter
	side       Side
	role       Role
	grace      time.Duration
	closeRecv  atomic.Bool // a Close frame came from the peer
	closeSent  atomic.Bool // a Close frame went out to the peer
	halfClosed atomic.Bool // the socket's write side is closed (FIN or TLS close_notify sent)
	// answered is closed when a Close frame goes out to a peer that has
	// ended its side after its own Close (see awaitAnswer); nil otherwise.
	answered atomic.Pointer[chan struct{}]
}

// CloseLinger is how long a leg whose closing handshake is complete, and whose
// write side is closed, waits for the peer's own end before closing the
// socket: the peer has the FIN (or close_notify) at once, and reading its
// answer first keeps the close from turning into a reset that could
// destroy the Close frame still in the peer's receive buffer.
const CloseLinger = time.Second

// Init prepares the leg to read conn for h under policy p; silence counts
// from start on the clock now. grace is how long a peer that sent its Close
// and ended its side waits for the answer (the mode's close grace).
func (l *Leg) Init(side Side, conn net.Conn, h Mode, p timeout.Policy, grace time.Duration, start time.Time, now func() time.Time) {
	l.side, l.role, l.conn, l.h, l.grace = side, RoleOf(side), conn, h, grace
	l.rd.Init(conn)
	l.park.Init(conn, l.turn)
	l.Live.Init(&l.rd, p, start, now, &l.park)
}

// Write writes segs to the peer under the policy's write timeout and
// records the write. A failed write starts closing the leg at once, which
// wakes its reader: the peer is gone or not reading. The caller holds the
// mode's write lock for the leg.
func (l *Leg) Write(segs [][]byte) error {
	if d, move := l.Live.WriteDeadline(); move {
		l.conn.SetWriteDeadline(d)
	}
	var err error
	if len(segs) == 1 {
		// Most writes are one segment: a plain write, without the iovec
		// array writev would keep on the socket.
		_, err = l.conn.Write(segs[0])
	} else {
		nb := net.Buffers(segs)
		_, err = nb.WriteTo(l.conn)
	}
	if err != nil {
		l.Live.StartClosing(0)
		return err
	}
	l.Live.Wrote()
	return nil
}

// Side is the side the leg is on.
func (l *Leg) Side() Side { return l.side }

// Role is what the gateway is on this leg.
func (l *Leg) Role() Role { return l.role }

// Conn is the leg's socket.
func (l *Leg) Conn() net.Conn { return l.conn }

// Run starts the reader in the calling goroutine: initial holds bytes read
// with the handshake, fed first.
func (l *Leg) Run(initial []byte) {
	if len(initial) > 0 {
		l.Bytes.Add(int64(len(initial)))
		l.h.Feed(initial)
	}
	l.turn()
}

// turn is one run of the reader: until the leg ends, or until it is quiet
// and parks, to be woken (in a new goroutine) by bytes, its next policy
// event or a close.
func (l *Leg) turn() {
	var why error
	for {
		if l.Live.Arm() {
			why = ErrGraceOver
			break
		}
		var b []byte
		var err error
		if wait := l.Live.WaitInPoller(); !wait && l.park.Unready() {
			// Woken by the timer or a Wake, and no bytes came since the
			// socket was last found empty: no read (package quiet).
			err = l.rd.Empty()
		} else {
			b, err = l.rd.Read(wait)
		}
		if err == quiet.ErrWouldBlock {
			if l.Live.Park() {
				return
			}
			continue
		}
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				if l.deadline() {
					why = ErrGraceOver
					break
				}
				if l.Live.Park() {
					return
				}
				continue
			}
			if errors.Is(err, io.EOF) && l.closeRecv.Load() && !l.closeSent.Load() {
				l.awaitAnswer()
			}
			why = err
			if !l.closeRecv.Load() && !l.Live.Closing() {
				l.h.Dropped(l.Live.Silence())
			}
			break
		}
		l.Bytes.Add(int64(len(b)))
		l.Silence = l.Live.Read()
		l.h.Feed(b)
	}
	l.park.Stop()
	l.rd.Release()
	if bc, ok := l.h.(BeforeCloser); ok {
		bc.BeforeClose()
	}
	l.conn.Close()
	l.h.Exit(why)
}

// awaitAnswer waits, up to the close grace period, for the Close frame
// that answers the peer's: the peer sent its Close and then ended its side
// of the connection. An HTTP/2 or HTTP/3 client ends its stream with its
// Close frame (Chromium does), a TCP peer may half-close; either can still
// read. In tunnel mode the answer is the backend's, relayed by the other
// leg's reader: closing the socket at the peer's end would end the stream
// before it, and the browser would report 1006 instead of the code it
// closed with. Only a closing leg waits here, for a bounded time.
func (l *Leg) awaitAnswer() {
	ch := make(chan struct{})
	l.answered.Store(&ch)
	if l.closeSent.Load() {
		return // SentClose came in between (it may not have seen ch)
	}
	t := time.NewTimer(l.grace)
	defer t.Stop()
	select {
	case <-ch:
	case <-t.C:
	}
}

// deadline runs the policy when the read deadline fired and reports
// whether the reader should stop.
func (l *Leg) deadline() bool {
	act, over := l.Live.Fired()
	if l.Live.Closing() {
		return over
	}
	switch act {
	case timeout.Ping:
		l.h.Ping()
	case timeout.CloseIdle:
		l.h.Timeout(act)
	case timeout.ClosePong:
		l.h.Timeout(act)
		// The peer is unresponsive: don't wait for its Close.
		l.Live.StartClosing(0)
		l.h.Dropped(l.Live.PingSilence())
	}
	return false
}

// RecordCloseReceived records the peer's Close frame.
func (l *Leg) RecordCloseReceived() {
	l.closeRecv.Store(true)
	l.closeDone()
}

// CloseReceived reports whether the peer sent a Close frame.
func (l *Leg) CloseReceived() bool { return l.closeRecv.Load() }

// RecordCloseSent records that a Close frame went out to the peer (the mode has
// written it; nothing may follow) and half-closes the socket, so the FIN
// says so while the peer's own Close can still come back.
func (l *Leg) RecordCloseSent() {
	l.closeSent.Store(true)
	if ch := l.answered.Swap(nil); ch != nil {
		close(*ch)
	}
	if halfClose(l.conn) {
		l.halfClosed.Store(true)
	}
	l.closeDone()
}

// halfClose closes conn's write side. A TLS connection's CloseWrite sends
// close_notify alone: the TCP FIN goes right behind it, or a peer whose
// TLS stack does not act on close_notify (Autobahn's Twisted) waits for
// the TCP close, and the gateway lingers for its end, until one of them
// gives up.
func halfClose(conn net.Conn) bool {
	cw, ok := conn.(interface{ CloseWrite() error })
	if !ok || cw.CloseWrite() != nil {
		return false
	}
	if tc, ok := conn.(*tls.Conn); ok {
		if tcp, ok := quiet.TCP(tc.NetConn()); ok {
			tcp.CloseWrite()
		}
	}
	return true
}

// closeDone ends a leg whose closing handshake is complete, when the
// gateway is its server: RFC 6455 §7.1.1 has the server close the TCP
// connection first, and a peer that waits for it (most clients) must not
// wait out the grace period. A leg whose write side is closed already
// lingers for the peer's end (see Linger); one that cannot half-close
// (wrapped connections, streams) closes at once.
func (l *Leg) closeDone() {
	if l.role == ServerRole && l.closeRecv.Load() && l.closeSent.Load() {
		if l.halfClosed.Load() {
			l.Live.StartClosing(CloseLinger)
		} else {
			l.Live.StartClosing(0)
		}
	}
}

// StartClosing gives the peer grace to finish closing.
func (l *Leg) StartClosing(grace time.Duration) { l.Live.StartClosing(grace) }

// Counts returns the leg's counters.
func (l *Leg) Counts() Counts {
	c := Counts{Bytes: l.Bytes.Load(), Messages: l.Msgs.Load()}
	c.Pings, c.Pongs, c.RTT = l.Live.Pings()
	return c
}

// Stats returns a live view of the leg.
func (l *Leg) Stats() LegView {
	return LegView{Counts: l.Counts(), Times: l.Live.Snapshot()}
}
