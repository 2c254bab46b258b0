package tunnel

import (
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-websocket/caddy-websocket/frame"
	"github.com/caddy-websocket/caddy-websocket/internal/lazyread"
	"github.com/caddy-websocket/caddy-websocket/timeout"
)

// pingTag marks the gateway's own Ping payloads (tag + sequence number), so
// the Pongs that answer them can be told from Pongs the peers exchange.
var pingTag = rand.Uint32()

// leg is one side of a tunnel: its socket, the reader state of the frames
// coming from it, and the writer state of the frames going to it.
type leg struct {
	c      *Conn
	side   Side
	peer   *leg
	conn   net.Conn
	rd     lazyread.Reader
	policy timeout.Policy

	// Reader-owned.
	scan     scanner
	deadline time.Time // read deadline currently set
	pingSeq  uint32
	rearm    bool // a Pong ended the pong deadline: consult the policy again

	// Shared between the two readers: nanoseconds since the tunnel started.
	lastRead, lastWrite, lastActive atomic.Int64
	pingSent                        atomic.Int64 // 0: no Ping outstanding
	closingAt                       atomic.Int64 // 0: not closing
	closeRecv                       atomic.Bool  // a Close frame came from the peer
	bytes, msgs, pings, pongs       atomic.Int64
	rtt                             atomic.Int64 // last Pong's round trip, ns

	// Writer state: what has been written to the peer, guarded by wmu.
	wmu       sync.Mutex
	midFrame  bool   // the stream to the peer is inside a frame
	pending   []byte // gateway frames waiting for a frame boundary
	pendClose bool   // pending ends with the gateway's Close frame
	closeSent bool   // a Close frame was relayed or queued to the peer; drop the rest
	writeDead bool   // a write failed; drop the rest
	wdeadline time.Time
	hasPend   atomic.Bool // hint for the other reader: mark a boundary
}

func (l *leg) init(c *Conn, side Side, conn net.Conn, p timeout.Policy) {
	l.c, l.side, l.conn, l.policy = c, side, conn, p
	l.rd.Init(conn)
	// Silence counts from the handshake.
	l.lastRead.Store(1)
	l.lastWrite.Store(1)
	l.lastActive.Store(1)
}

func (l *leg) now() int64 { return int64(l.c.cfg.Now().Sub(l.c.start)) }

func (l *leg) at(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return l.c.start.Add(time.Duration(ns))
}

// run is the reader goroutine of this leg: it relays what the peer sends to
// the other leg and runs this leg's timeout policy on its read deadline.
func (l *leg) run(initial []byte) {
	if len(initial) > 0 {
		l.bytes.Add(int64(len(initial)))
		l.scan.relay(l, initial)
	}
	why := ""
	for {
		if l.armDeadline() {
			why = "close grace period over"
			break
		}
		b, err := l.rd.Read()
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				if l.onDeadline() {
					why = "close grace period over"
					break
				}
				continue
			}
			why = err.Error()
			break
		}
		l.bytes.Add(int64(len(b)))
		l.lastRead.Store(l.now())
		l.scan.relay(l, b)
	}
	l.rd.Release()
	l.conn.Close()
	l.c.readerDone(l, why)
}

// armDeadline sets the read deadline to the next policy wake-up or the end
// of the close grace period. It reports true when that period is over.
func (l *leg) armDeadline() bool {
	for {
		var d time.Time
		ca := l.closingAt.Load()
		switch {
		case ca != 0:
			if l.now() >= ca {
				return true
			}
			d = l.at(ca)
		case !l.deadline.IsZero() && !l.rearm:
			// Traffic only moves the policy's next event later, so the
			// deadline already set fires early at worst and is re-armed
			// then: a busy leg is not re-armed on every read.
			return false
		default:
			l.rearm = false
			_, d = l.policy.Decide(l.state(), l.c.cfg.Now())
		}
		if d.Equal(l.deadline) {
			return false
		}
		l.deadline = d
		l.conn.SetReadDeadline(d)
		// startClosing may have set its deadline between the load above and
		// ours: look again so the grace deadline is never overwritten.
		if ca != 0 || l.closingAt.Load() == 0 {
			return false
		}
	}
}

func (l *leg) state() timeout.Leg {
	return timeout.Leg{
		LastRead:   l.at(l.lastRead.Load()),
		LastWrite:  l.at(l.lastWrite.Load()),
		LastActive: l.at(l.lastActive.Load()),
		PingSent:   l.at(l.pingSent.Load()),
	}
}

// onDeadline runs the policy when the read deadline fires and reports
// whether the reader should stop.
func (l *leg) onDeadline() bool {
	l.deadline = time.Time{} // the fired deadline must be re-armed
	if l.closingAt.Load() != 0 {
		return l.now() >= l.closingAt.Load()
	}
	switch act, _ := l.policy.Decide(l.state(), l.c.cfg.Now()); act {
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
		l.startClosing(0)
	}
	return false
}

// sendPing sends the gateway's keepalive Ping to this leg's peer.
func (l *leg) sendPing() {
	l.pingSeq++
	var p [8]byte
	binary.BigEndian.PutUint32(p[:4], pingTag)
	binary.BigEndian.PutUint32(p[4:], l.pingSeq)
	now := l.now()
	l.pingSent.Store(now)
	l.pings.Add(1)
	l.sendControl(l.frame(frame.OpPing, p[:]), false)
}

// isOwnPong reports whether an (unmasked) Pong payload answers one of the
// gateway's pings on this leg, and clears the outstanding ping if so.
func (l *leg) isOwnPong(p []byte) bool {
	if len(p) != 8 || binary.BigEndian.Uint32(p[:4]) != pingTag {
		return false
	}
	l.pongs.Add(1)
	if binary.BigEndian.Uint32(p[4:]) == l.pingSeq {
		if sent := l.pingSent.Swap(0); sent != 0 {
			l.rtt.Store(l.now() - sent)
		}
		l.rearm = true
	}
	return true
}

// frame builds a gateway frame for this leg's peer: masked towards the
// backend (the gateway is its client), unmasked towards the client.
func (l *leg) frame(op frame.Opcode, payload []byte) []byte {
	var key [4]byte
	masked := l.side == Backend
	if masked {
		binary.LittleEndian.PutUint32(key[:], rand.Uint32())
	}
	return frame.AppendFrame(make([]byte, 0, 2+4+len(payload)), op, payload, masked, key)
}

// sendClose sends a Close frame to the peer unless one was already sent.
func (l *leg) sendClose(code int, reason string) {
	var key [4]byte
	if l.side == Backend {
		binary.LittleEndian.PutUint32(key[:], rand.Uint32())
	}
	l.sendControl(frame.AppendClose(nil, code, reason, l.side == Backend, key), true)
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
	if wt := l.policy.WriteTimeout; wt > 0 {
		// Re-arming a deadline costs a timer update; do it only when the
		// current one is more than half used.
		now := l.c.cfg.Now()
		if l.wdeadline.Sub(now) < wt/2 {
			l.wdeadline = now.Add(wt)
			l.conn.SetWriteDeadline(l.wdeadline)
		}
	}
	if _, err := segs.WriteTo(l.conn); err != nil {
		l.writeDead = true
		l.pending, l.pendClose = nil, false
		// Wake this leg's reader: the peer is gone or not reading.
		l.closingAt.CompareAndSwap(0, l.now()+1)
		l.conn.SetReadDeadline(time.Unix(1, 0))
		return
	}
	l.lastWrite.Store(l.now())
}

// startClosing gives the peer grace to finish the closing handshake; then
// its reader closes the socket.
func (l *leg) startClosing(grace time.Duration) {
	at := l.now() + int64(grace)
	for {
		cur := l.closingAt.Load()
		if cur != 0 && cur <= at {
			return
		}
		if l.closingAt.CompareAndSwap(cur, at) {
			l.conn.SetReadDeadline(l.at(at))
			return
		}
	}
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
