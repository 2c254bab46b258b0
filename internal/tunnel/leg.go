package tunnel

import (
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-websocket/caddy-websocket/internal/frame"
	"github.com/caddy-websocket/caddy-websocket/internal/lazyread"
	"github.com/caddy-websocket/caddy-websocket/internal/liveness"
	"github.com/caddy-websocket/caddy-websocket/internal/park"
	"github.com/caddy-websocket/caddy-websocket/internal/timeout"
)

// leg is one side of a tunnel: its socket, the reader state of the frames
// coming from it, and the writer state of the frames going to it.
type leg struct {
	c    *Conn
	side Side
	peer *leg
	conn net.Conn
	rd   lazyread.Reader
	live liveness.Watch
	park park.Waiter

	// Reader-owned.
	scan    scanner
	silence time.Duration // both ways, before the last read

	bytes, msgs atomic.Int64
	closeRecv   atomic.Bool // a Close frame came from the peer

	// Writer state: what has been written to the peer, guarded by wmu.
	wmu       sync.Mutex
	hasPend   atomic.Bool // hint for the other reader: mark a boundary
	midFrame  bool        // the stream to the peer is inside a frame
	pendClose bool        // pending ends with the gateway's Close frame
	closeSent bool        // a Close frame was relayed or queued to the peer; drop the rest
	writeDead bool        // a write failed; drop the rest
	pending   []byte      // gateway frames waiting for a frame boundary
	writeErr  error       // why
}

func (l *leg) init(c *Conn, side Side, conn net.Conn, p timeout.Policy) {
	l.c, l.side, l.conn = c, side, conn
	l.rd.Init(conn)
	l.park.Init(conn, l.turn)
	l.live.Init(conn, p, c.start, c.cfg.Now, &l.park)
}

// run starts the leg's reader: it relays what the peer sends to the other
// leg and runs this leg's timeout policy.
func (l *leg) run(initial []byte) {
	if len(initial) > 0 {
		l.bytes.Add(int64(len(initial)))
		l.scan.relay(l, initial)
	}
	l.turn()
}

// turn is one run of the reader, in its own goroutine: until the leg ends,
// or until it is quiet and parks, to be woken by bytes, its next policy
// event or a close.
func (l *leg) turn() {
	why := ""
	for {
		if l.live.Arm() {
			why = "close grace period over"
			break
		}
		b, err := l.rd.Read(l.live.Linger())
		if err == lazyread.ErrWouldBlock {
			if l.live.Park() {
				return
			}
			continue
		}
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				if l.onDeadline() {
					why = "close grace period over"
					break
				}
				if l.live.Park() {
					return
				}
				continue
			}
			why = err.Error()
			if !l.closeRecv.Load() && !l.live.Closing() {
				l.c.dropped(l.side, l.live.Silence())
			}
			break
		}
		l.bytes.Add(int64(len(b)))
		l.silence = l.live.Read()
		l.scan.relay(l, b)
	}
	l.park.Stop()
	l.rd.Release()
	l.conn.Close()
	l.c.readerDone(l, why)
}

// onDeadline runs the policy when the read deadline fires and reports
// whether the reader should stop.
func (l *leg) onDeadline() bool {
	act, over := l.live.Fired()
	if l.live.Closing() {
		return over
	}
	switch act {
	case timeout.Ping:
		l.sendPing()
	case timeout.CloseIdle:
		if l.side == Client {
			l.c.gatewayClose(frame.CloseGoingAway, "idle timeout", frame.CloseGoingAway, "client idle timeout")
		} else {
			l.c.gatewayClose(frame.CloseGoingAway, "backend idle timeout", frame.CloseGoingAway, "idle timeout")
		}
	case timeout.ClosePong:
		if l.side == Client {
			l.c.gatewayClose(frame.CloseGoingAway, "ping timeout", frame.CloseGoingAway, "client did not answer ping")
		} else {
			l.c.gatewayClose(frame.CloseInternalError, "backend did not answer ping", frame.CloseGoingAway, "ping timeout")
		}
		// The peer is unresponsive: don't wait for its Close.
		l.live.StartClosing(0)
		l.c.dropped(l.side, l.live.PingSilence())
	}
	return false
}

// sendPing sends the gateway's keepalive Ping to this leg's peer.
func (l *leg) sendPing() {
	p := l.live.NextPing()
	l.sendControl(l.frame(frame.OpPing, p[:]), false)
}

// isOwnPong reports whether an (unmasked) Pong payload answers one of the
// gateway's pings on this leg.
func (l *leg) isOwnPong(p []byte) bool {
	own, rtt := l.live.Pong(p)
	if rtt > 0 && l.c.cfg.OnPong != nil {
		l.c.cfg.OnPong(l.side, rtt)
	}
	return own
}

// frame builds a gateway frame for this leg's peer: masked towards the
// backend (the gateway is its client), unmasked towards the client.
func (l *leg) frame(op frame.Opcode, payload []byte) []byte {
	masked := l.side == Backend
	return frame.AppendFrame(make([]byte, 0, 2+4+len(payload)), op, payload, masked, frame.NewKey(masked))
}

// sendClose sends a Close frame to the peer unless one was already sent.
func (l *leg) sendClose(code int, reason string) {
	masked := l.side == Backend
	l.sendControl(frame.AppendClose(nil, code, reason, masked, frame.NewKey(masked)), true)
}

// sendControl writes a gateway frame now if the stream to the peer is
// between frames, or queues it for the next frame boundary.
func (l *leg) sendControl(f []byte, isClose bool) {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	if l.closeSent || l.writeDead {
		return
	}
	if isClose {
		// A Close replaces queued pings: nothing may follow it.
		l.pending = f
		l.pendClose = true
		l.closeSent = true
	} else {
		l.pending = append(l.pending, f...)
	}
	l.hasPend.Store(true)
	if !l.midFrame {
		l.flushPendingLocked()
	}
}

func (l *leg) flushPendingLocked() {
	if len(l.pending) == 0 {
		return
	}
	p, isClose := l.pending, l.pendClose
	l.pending, l.pendClose = nil, false
	l.hasPend.Store(false)
	l.writeLocked(net.Buffers{p})
	if isClose {
		l.closeWrite()
	}
}

// write relays segments to the peer: segs[:boundary] end at a frame
// boundary (boundary < 0: none known), and midFrame tells whether the stream
// is inside a frame after all of segs. Queued gateway frames go out at the
// first boundary. closeFrame marks that segs carry a Close from the other
// side, after which nothing more may be written.
func (l *leg) write(segs net.Buffers, boundary int, midFrame, closeFrame bool) {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	if l.closeSent || l.writeDead {
		return
	}
	if len(l.pending) > 0 && boundary >= 0 && !(boundary == 0 && l.midFrame) {
		l.writeLocked(segs[:boundary])
		l.flushPendingLocked()
		segs = segs[boundary:]
	}
	l.writeLocked(segs)
	l.midFrame = midFrame
	if closeFrame {
		l.closeSent = true
		l.pending, l.pendClose = nil, false
		l.hasPend.Store(false)
		l.closeWrite()
	}
	if !l.midFrame {
		l.flushPendingLocked()
	}
}

func (l *leg) writeLocked(segs net.Buffers) {
	if len(segs) == 0 || l.writeDead {
		return
	}
	if err := l.live.Write(segs); err != nil {
		l.writeDead, l.writeErr = true, err
		l.pending, l.pendClose = nil, false
	}
}

func (l *leg) startClosing(grace time.Duration) { l.live.StartClosing(grace) }

// stoppedReading reports whether writes to the peer timed out: it is there
// but not reading.
func (l *leg) stoppedReading() bool {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	return errors.Is(l.writeErr, os.ErrDeadlineExceeded)
}

func (l *leg) sentClose() bool {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	return l.closeSent
}

// closeWrite half-closes the socket once a Close frame has gone out: nothing
// may follow it, and the FIN tells the peer so while its own Close can
// still come back (RFC 6455 §7.1.1: the server closes TCP first).
func (l *leg) closeWrite() {
	if cw, ok := l.conn.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}
