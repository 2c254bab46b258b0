package tunnel

import (
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-websocket/caddy-websocket/internal/frame"
	"github.com/caddy-websocket/caddy-websocket/internal/relay"
	"github.com/caddy-websocket/caddy-websocket/internal/timeout"
)

// leg is one side of a tunnel: the relay core's leg (socket, reader,
// policy), the scanner of the frames coming from it, and the writer state
// of the frames going to it.
type leg struct {
	relay.Leg
	c     *Conn
	other *leg // the leg on the other side
	scan  scanner

	// Writer state: what has been written to this leg, guarded by wmu.
	wmu       sync.Mutex
	hasPend   atomic.Bool // hint for the other reader: mark a boundary
	midFrame  bool        // the stream to the peer is inside a frame
	pendClose bool        // pending ends with the gateway's Close frame
	closeSent bool        // a Close frame was relayed or queued to the peer; drop the rest
	writeDead bool        // a write failed; drop the rest
	pending   []byte      // gateway frames waiting for a frame boundary
	writeErr  error       // why
}

func (l *leg) init(c *Conn, side relay.Side, conn net.Conn, p timeout.Policy) {
	l.c = c
	l.Init(side, conn, l, p, c.cfg.CloseGrace, c.start, c.cfg.Now)
}

// Feed relays what the peer sent to the other leg.
func (l *leg) Feed(b []byte) { l.scan.scan(l, b) }

// Exit ends the leg's part of the connection.
func (l *leg) Exit(err error) { l.c.readerDone(l, err.Error()) }

// Dropped tells the learner the peer went after silence.
func (l *leg) Dropped(silence time.Duration) { l.c.dropped(l.Side(), silence) }

// Ping sends the gateway's keepalive Ping to this leg's peer.
func (l *leg) Ping() { l.sendPing() }

// Timeout closes the connection for the leg's idle or pong timeout.
func (l *leg) Timeout(act timeout.Action) {
	client := l.Side() == relay.Client
	switch {
	case act == timeout.CloseIdle && client:
		l.c.gatewayClose(frame.CloseGoingAway, "idle timeout", frame.CloseGoingAway, "client idle timeout")
	case act == timeout.CloseIdle:
		l.c.gatewayClose(frame.CloseGoingAway, "backend idle timeout", frame.CloseGoingAway, "idle timeout")
	case client:
		l.c.gatewayClose(frame.CloseGoingAway, "ping timeout", frame.CloseGoingAway, "client did not answer ping")
	default:
		l.c.gatewayClose(frame.CloseInternalError, "backend did not answer ping", frame.CloseGoingAway, "ping timeout")
	}
}

// sendPing sends the gateway's keepalive Ping to this leg's peer.
func (l *leg) sendPing() {
	p := l.Live.NextPing()
	l.sendControl(l.frame(frame.OpPing, p[:]), false)
}

// isOwnPong reports whether an (unmasked) Pong payload answers one of the
// gateway's pings on this leg.
func (l *leg) isOwnPong(p []byte) bool {
	own, rtt := l.Live.Pong(p)
	if rtt > 0 && l.c.cfg.OnPong != nil {
		l.c.cfg.OnPong(l.Side(), rtt)
	}
	return own
}

// frame builds a gateway frame for this leg's peer: masked towards the
// backend (the gateway is its client), unmasked towards the client.
func (l *leg) frame(op frame.Opcode, payload []byte) []byte {
	masked := l.Role().Masks()
	return frame.AppendFrame(make([]byte, 0, 2+4+len(payload)), op, payload, masked, frame.NewKey(masked))
}

// sendClose sends a Close frame to the peer unless one was already sent.
func (l *leg) sendClose(code frame.StatusCode, reason string) {
	masked := l.Role().Masks()
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
		l.RecordCloseSent()
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
		l.RecordCloseSent()
	}
	if !l.midFrame {
		l.flushPendingLocked()
	}
}

func (l *leg) writeLocked(segs net.Buffers) {
	if len(segs) == 0 || l.writeDead {
		return
	}
	if err := l.Write(segs); err != nil {
		l.writeDead, l.writeErr = true, err
		l.pending, l.pendClose = nil, false
	}
}

// stoppedReading reports whether writes to the peer timed out: it is there
// but not reading.
func (l *leg) stoppedReading() bool {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	return errors.Is(l.writeErr, os.ErrDeadlineExceeded)
}

func (l *leg) wroteClose() bool {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	return l.closeSent
}
