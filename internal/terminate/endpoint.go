package terminate

import (
	"errors"
	"net"
	"sync"
	"time"

	"github.com/caddy-websocket/caddy-websocket/internal/frame"
	"github.com/caddy-websocket/caddy-websocket/internal/relay"
	"github.com/caddy-websocket/caddy-websocket/internal/timeout"
)

// ending says how an endpoint's WebSocket session ended.
type ending struct {
	// byPeer: the peer sent a Close frame (code, reason are its).
	// Otherwise the gateway closed: code is what it sent, or 1006 when the
	// peer vanished without a Close frame.
	byPeer bool
	code   frame.StatusCode
	reason string
}

// endpoint is one WebSocket connection that the gateway terminates: the
// client leg (the gateway is the server: frames arrive masked) or a backend
// leg (the gateway is the client: it masks what it sends). It validates
// every frame it reads, assembles messages and hands them to its Conn, and
// answers Pings itself.
type endpoint struct {
	relay.Leg
	c       *Conn
	deflate bool // permessage-deflate was negotiated (client leg only)
	maxMsg  int64

	// Reader-owned.
	hdr      [frame.MaxHeaderSize]byte
	hdrN     int
	cur      frame.Header
	inFrame  bool
	remain   int64
	maskPos  int
	inMsg    bool
	msgOp    frame.Opcode
	msgFlate bool
	msg      []byte
	text     utf8Stream
	ctl      [frame.MaxControlPayload]byte
	ctlN     int
	failed   bool // a protocol error was answered: ignore the rest
	notified bool // the Conn was told how the session ended
	tokens   float64
	tokensAt time.Time // message-rate bucket (client leg, MaxMessageRate)

	// Writer state, guarded by wmu.
	wmu       sync.Mutex
	closeSent bool
	writeDead bool
	hdrOut    [frame.MaxHeaderSize]byte
	out       []byte // frames held for one write at the end of the peer's read (queueMessage)
}

func newEndpoint(c *Conn, side relay.Side, conn net.Conn, p timeout.Policy) *endpoint {
	e := &endpoint{c: c, maxMsg: c.cfg.MaxMessageSize}
	e.Init(side, conn, e, p, c.cfg.CloseGrace, c.cfg.Now(), c.cfg.Now)
	return e
}

// name is the endpoint's side, for reasons and logs.
func (e *endpoint) name() string { return e.Side().String() }

// server reports whether the gateway is the server on this leg.
func (e *endpoint) server() bool { return e.Role() == relay.Server }

// Feed parses what the peer sent and writes the messages it completes to
// the other side.
func (e *endpoint) Feed(b []byte) {
	e.feed(b)
	e.c.flushPeer(e)
}

// Exit ends the endpoint's session, if nothing did yet, and tells the Conn
// its reader is done.
func (e *endpoint) Exit(err error) {
	if err != relay.ErrGraceOver {
		e.end(ending{code: frame.CloseAbnormal, reason: e.name() + " went away: " + err.Error()})
	}
	e.releaseMsg()
	e.end(ending{code: frame.CloseAbnormal, reason: e.name() + " connection closed"})
	e.c.exited(e)
}

// Dropped tells the learner the peer went after silence.
func (e *endpoint) Dropped(silence time.Duration) { e.c.dropped(e, silence) }

// Ping sends the peer the gateway's keepalive Ping.
func (e *endpoint) Ping() {
	p := e.Live.NextPing()
	e.writeControl(frame.OpPing, p[:])
}

// Timeout closes the session for the leg's idle or pong timeout.
func (e *endpoint) Timeout(act timeout.Action) {
	if act == timeout.CloseIdle {
		e.close(frame.CloseGoingAway, "idle timeout")
		e.end(ending{code: frame.CloseGoingAway, reason: e.name() + " idle timeout"})
		return
	}
	e.close(frame.CloseGoingAway, "ping timeout")
	e.end(ending{code: frame.CloseGoingAway, reason: e.name() + " did not answer ping"})
}

// end tells the Conn, once, how this endpoint's session ended.
func (e *endpoint) end(how ending) {
	if e.notified {
		return
	}
	e.notified = true
	e.c.ended(e, how)
}

// feed parses the bytes b, which the endpoint may modify (unmask) in place.
func (e *endpoint) feed(b []byte) {
	for len(b) > 0 && !e.failed {
		if !e.inFrame {
			n := e.readHeader(b)
			b = b[n:]
			if !e.inFrame {
				return // header incomplete
			}
			if e.remain == 0 {
				e.frameEnd()
			}
			continue
		}
		k := int64(len(b))
		if k > e.remain {
			k = e.remain
		}
		p := b[:k]
		b = b[k:]
		e.remain -= k
		if e.cur.Masked {
			e.maskPos = frame.Mask(e.cur.Mask, e.maskPos, p)
		}
		if e.cur.Op.IsControl() {
			e.ctlN += copy(e.ctl[e.ctlN:], p)
		} else if e.payload(p) && e.remain == 0 {
			e.frameEnd()
		}
		if e.remain == 0 && e.cur.Op.IsControl() {
			e.frameEnd()
		}
	}
}

// readHeader collects and checks a frame header from b and returns how many
// bytes it used.
func (e *endpoint) readHeader(b []byte) int {
	used := 0
	for {
		need := 2
		if e.hdrN >= 2 {
			need = frame.HeaderSize(e.hdr[0], e.hdr[1])
		}
		if e.hdrN >= need {
			break
		}
		k := copy(e.hdr[e.hdrN:need], b[used:])
		e.hdrN += k
		used += k
		if e.hdrN < need {
			return used
		}
	}
	h, _, err := frame.ParseHeader(e.hdr[:e.hdrN])
	e.hdrN = 0
	if err != nil {
		e.fail(frame.CloseProtocolError, "frame length out of range")
		return used
	}
	if code, why := e.check(h); code != 0 {
		e.fail(code, why)
		return used
	}
	e.cur, e.inFrame, e.remain, e.maskPos, e.ctlN = h, true, h.Length, 0, 0
	if h.Op == frame.OpText || h.Op == frame.OpBinary {
		e.inMsg, e.msgOp, e.msgFlate = true, h.Op, h.Rsv&frame.Rsv1 != 0
		e.msg = getMsg()
	}
	return used
}

// check applies RFC 6455 §5 to a header; it returns a Close code and reason
// for a violation.
func (e *endpoint) check(h frame.Header) (frame.StatusCode, string) {
	switch {
	case h.Op.IsReserved():
		return frame.CloseProtocolError, "reserved opcode"
	case h.Rsv&^frame.Rsv1 != 0,
		h.Rsv&frame.Rsv1 != 0 && !(e.deflate && (h.Op == frame.OpText || h.Op == frame.OpBinary)):
		return frame.CloseProtocolError, "reserved bits set"
	case h.Op.IsControl() && !h.Fin:
		return frame.CloseProtocolError, "fragmented control frame"
	case h.Op.IsControl() && h.Length > frame.MaxControlPayload:
		return frame.CloseProtocolError, "control frame too long"
	case e.server() && !h.Masked:
		return frame.CloseProtocolError, "client frame not masked"
	case !e.server() && h.Masked:
		return frame.CloseProtocolError, "server frame masked"
	case h.Op == frame.OpContinuation && !e.inMsg:
		return frame.CloseProtocolError, "continuation frame without a message"
	case (h.Op == frame.OpText || h.Op == frame.OpBinary) && e.inMsg:
		return frame.CloseProtocolError, "new message inside a fragmented message"
	}
	if !h.Op.IsControl() {
		limit := e.maxMsg
		flate := h.Rsv&frame.Rsv1 != 0
		if h.Op == frame.OpContinuation {
			flate = e.msgFlate
		}
		if flate {
			limit += limit/8 + 1024 // compressed bytes; the real check is after inflating
		}
		if int64(len(e.msg))+h.Length > limit {
			return frame.CloseTooBig, "message too big"
		}
	}
	return 0, ""
}

// payload takes data-frame payload bytes; it reports false after failing.
func (e *endpoint) payload(p []byte) bool {
	if e.msgOp == frame.OpText && !e.msgFlate && !e.text.write(p) {
		e.fail(frame.CloseInvalidPayload, "invalid UTF-8 in text message")
		return false
	}
	e.msg = append(e.msg, p...)
	return true
}

// frameEnd handles a complete frame.
func (e *endpoint) frameEnd() {
	e.inFrame = false
	h := e.cur
	if h.Op.IsControl() {
		e.control(h.Op, e.ctl[:e.ctlN])
		return
	}
	if !h.Fin {
		return
	}
	msg, op := e.msg, e.msgOp
	e.inMsg = false
	if e.msgFlate {
		out, err := decompress(getMsg(), msg, e.maxMsg)
		putMsg(msg)
		msg, e.msg = out, out
		switch {
		case errors.Is(err, errTooBig):
			e.fail(frame.CloseTooBig, "message too big")
			return
		case err != nil:
			e.fail(frame.CloseInvalidPayload, "invalid compressed data")
			return
		}
		if op == frame.OpText && !(e.text.write(msg) && e.text.done()) {
			e.fail(frame.CloseInvalidPayload, "invalid UTF-8 in text message")
			return
		}
	} else if op == frame.OpText && !e.text.done() {
		e.fail(frame.CloseInvalidPayload, "invalid UTF-8 in text message")
		return
	}
	if !e.allowMessage() {
		e.fail(frame.ClosePolicyViolation, "message rate exceeded")
		return
	}
	e.Msgs.Add(1)
	e.Live.Active()
	if !e.GotClose() && !e.sentClose() {
		e.c.message(e, op, msg)
	}
	e.releaseMsg()
}

// allowMessage takes a token from the client's message-rate bucket: it
// holds up to MaxMessageRate messages and refills at that many per second.
func (e *endpoint) allowMessage() bool {
	rate := e.c.cfg.MaxMessageRate
	if rate <= 0 || !e.server() {
		return true
	}
	now := e.c.cfg.Now()
	if e.tokensAt.IsZero() {
		e.tokens = rate
	} else {
		e.tokens = min(rate, e.tokens+now.Sub(e.tokensAt).Seconds()*rate)
	}
	e.tokensAt = now
	if e.tokens < 1 {
		return false
	}
	e.tokens--
	return true
}

func (e *endpoint) releaseMsg() {
	if e.msg != nil {
		putMsg(e.msg)
		e.msg = nil
	}
}

// control handles a complete control frame from the peer.
func (e *endpoint) control(op frame.Opcode, p []byte) {
	switch op {
	case frame.OpPing:
		e.Live.Active()
		e.writeControl(frame.OpPong, p)
	case frame.OpPong:
		if own, rtt := e.Live.Pong(p); own {
			if rtt > 0 && e.c.cfg.OnPong != nil {
				e.c.cfg.OnPong(e.Side(), rtt)
			}
			return
		}
		e.Live.Active()
	case frame.OpClose:
		code, reason, ok := frame.ParseClose(p)
		if !ok {
			if len(p) > 2 && frame.ValidCloseCode(code) {
				e.fail(frame.CloseInvalidPayload, "invalid UTF-8 in close reason")
			} else {
				e.fail(frame.CloseProtocolError, "invalid close frame")
			}
			return
		}
		if (code == frame.CloseNormal || code == frame.CloseGoingAway) && !e.GotClose() && !e.sentClose() {
			e.c.dropped(e, e.Silence) // the peer closed first: perhaps its idle timer
		}
		e.ReceivedClose()
		if !e.sentClose() {
			// Echo the code (RFC 6455 §5.5.1); 1005 may not be sent.
			echo := code
			if echo == frame.CloseNoStatus {
				echo = frame.CloseNormal
			}
			e.close(echo, "")
		}
		e.end(ending{byPeer: true, code: code, reason: reason})
		e.Live.StartClosing(e.c.cfg.CloseGrace)
	}
}

// fail answers a protocol violation: Close with code, then the peer gets a
// grace period to hang up.
func (e *endpoint) fail(code frame.StatusCode, reason string) {
	e.failed = true
	e.close(code, reason)
	e.end(ending{code: code, reason: e.name() + " protocol error: " + reason})
}

// close sends a Close frame (once) and starts the grace period.
func (e *endpoint) close(code frame.StatusCode, reason string) {
	f := frame.AppendClose(nil, code, reason, !e.server(), frame.NewKey(!e.server()))
	e.wmu.Lock()
	if !e.closeSent && !e.writeDead {
		e.pushesFirstLocked() // pushes accepted before the Close go before it
		e.closeSent = true
		e.writeLocked(f)
		e.SentClose()
	}
	e.wmu.Unlock()
	e.Live.StartClosing(e.c.cfg.CloseGrace)
}

func (e *endpoint) sentClose() bool {
	e.wmu.Lock()
	defer e.wmu.Unlock()
	return e.closeSent
}

func (e *endpoint) writeControl(op frame.Opcode, p []byte) {
	var buf [frame.MaxHeaderSize + frame.MaxControlPayload]byte
	f := frame.AppendFrame(buf[:0], op, p, !e.server(), frame.NewKey(!e.server()))
	e.wmu.Lock()
	if !e.closeSent {
		e.writeLocked(f)
	}
	e.wmu.Unlock()
}

// writeMessage sends a whole message as one frame now, compressed when the
// client leg negotiated it, masked (in a copy) towards a backend, so p is
// left as it was and can be sent again after a reconnect. It reports false
// when the message could not be written.
func (e *endpoint) writeMessage(op frame.Opcode, p []byte) bool {
	return e.send(op, p, false)
}

// maxBatch bounds the frames an endpoint holds back for one write.
const maxBatch = 64 << 10

// queueMessage is writeMessage for a message relayed from the peer's
// reader: a small one joins the frames held until that reader has handled
// all it read (flush), so the messages of one read go out in one write
// instead of one write each. It reports false when the message cannot be
// sent; one that is queued and then fails to go out is lost like one
// written to a peer that dies after the write.
func (e *endpoint) queueMessage(op frame.Opcode, p []byte) bool {
	return e.send(op, p, len(p) <= maxBatch/4)
}

func (e *endpoint) send(op frame.Opcode, p []byte, queue bool) bool {
	h, p, done := e.prepare(op, p)
	defer done()
	e.wmu.Lock()
	defer e.wmu.Unlock()
	if e.closeSent || e.writeDead {
		return false
	}
	if !e.pushesFirstLocked() {
		return false
	}
	if !queue {
		if h.Masked {
			masked := append(getMsg(), p...)
			defer putMsg(masked)
			frame.Mask(h.Mask, 0, masked)
			p = masked
		}
		return e.writeLocked(e.hdrOut[:frame.PutHeader(e.hdrOut[:], h)], p)
	}
	return e.holdLocked(h, p)
}

// appendLocked frames a message into the held frames; the caller holds
// wmu.
func (e *endpoint) appendLocked(op frame.Opcode, p []byte) bool {
	h, p, done := e.prepare(op, p)
	defer done()
	return e.holdLocked(h, p)
}

// holdLocked adds a prepared frame to the held frames, writing them once
// they reach maxBatch; the caller holds wmu.
func (e *endpoint) holdLocked(h frame.Header, p []byte) bool {
	if e.out == nil {
		e.out = getMsg()
	}
	e.out = append(e.out, e.hdrOut[:frame.PutHeader(e.hdrOut[:], h)]...)
	start := len(e.out)
	e.out = append(e.out, p...)
	if h.Masked {
		frame.Mask(h.Mask, 0, e.out[start:])
	}
	if len(e.out) >= maxBatch {
		return e.flushLocked()
	}
	return true
}

// prepare compresses a message if the leg negotiated it and returns its
// frame header and payload; done gives the compressed copy back.
func (e *endpoint) prepare(op frame.Opcode, p []byte) (frame.Header, []byte, func()) {
	h := frame.Header{Fin: true, Op: op, Masked: !e.server()}
	done := func() {}
	if e.deflate && len(p) >= minCompress {
		zipped := compress(getMsg(), p)
		done = func() { putMsg(zipped) }
		p = zipped
		h.Rsv = frame.Rsv1
	}
	h.Length = int64(len(p))
	if h.Masked {
		h.Mask = frame.NewKey(true)
	}
	return h, p, done
}

// flush writes the frames queueMessage held.
func (e *endpoint) flush() {
	e.wmu.Lock()
	e.flushLocked()
	e.wmu.Unlock()
}

func (e *endpoint) flushLocked() bool {
	if e.out == nil {
		return !e.writeDead
	}
	out := e.out
	e.out = nil
	ok := e.writeRaw(out)
	putMsg(out)
	return ok
}

// writeLocked writes bufs after any frames held for a flush, which must go
// first. The caller holds wmu.
func (e *endpoint) writeLocked(bufs ...[]byte) bool {
	if !e.flushLocked() {
		return false
	}
	return e.writeRaw(bufs...)
}

func (e *endpoint) writeRaw(bufs ...[]byte) bool {
	if e.writeDead {
		return false
	}
	if e.Live.Write(bufs) != nil {
		e.writeDead = true
		return false
	}
	return true
}

// Message buffers are pooled so that an idle endpoint holds none.
var msgPool sync.Pool

const maxPooled = 64 << 10

func getMsg() []byte {
	if b, ok := msgPool.Get().(*[]byte); ok {
		return (*b)[:0]
	}
	return make([]byte, 0, 512)
}

func putMsg(b []byte) {
	if cap(b) == 0 || cap(b) > maxPooled {
		return
	}
	msgPool.Put(&b)
}
