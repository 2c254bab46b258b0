package terminate

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-websocket/caddy-websocket/internal/frame"
	"github.com/caddy-websocket/caddy-websocket/internal/relay"
	"github.com/caddy-websocket/caddy-websocket/internal/timeout"
)

// ending says how an leg's WebSocket session ended.
type ending struct {
	// byPeer: the peer sent a Close frame (code, reason are its).
	// Otherwise the gateway closed: code is what it sent, or 1006 when the
	// peer vanished without a Close frame.
	byPeer bool
	code   frame.StatusCode
	reason string
	// vanished: the peer went without a Close frame (its connection
	// dropped, or it stopped answering Pings): a client that may come
	// back, with resume on.
	vanished bool
}

// leg is one WebSocket connection that the gateway terminates: the
// client leg (the gateway is the server: frames arrive masked) or a backend
// leg (the gateway is the client: it masks what it sends). It validates
// every frame it reads, assembles messages and hands them to its Conn, and
// answers Pings itself.
type leg struct {
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

	// taken: a new connection of the same client took the session over;
	// this leg's end is not the session's.
	taken atomic.Bool

	// Writer state, guarded by wmu.
	wmu        sync.Mutex
	closeSent  bool
	writeDead  bool
	detached   bool    // the session detached from this (client) leg: write nothing more
	sent       sentLog // with resume: what the client may not have read
	ackedKnown bool    // sent was trimmed by what TCP acknowledged at the end
	hdrOut     [frame.MaxHeaderSize]byte
	out        []byte // frames held for one write at the end of the peer's read (queueMessage)
}

func newEndpoint(c *Conn, side relay.Side, conn net.Conn, p timeout.Policy) *leg {
	e := &leg{c: c, maxMsg: c.cfg.MaxMessageSize}
	e.Init(side, conn, e, p, c.cfg.CloseGrace, c.cfg.Now(), c.cfg.Now)
	return e
}

// name is the leg's side, for reasons and logs.
func (l *leg) name() string { return l.Side().String() }

// server reports whether the gateway is the server on this leg.
func (l *leg) server() bool { return l.Role() == relay.ServerRole }

// Feed parses what the peer sent and writes the messages it completes to
// the other side.
func (l *leg) Feed(b []byte) {
	l.feed(b)
	l.c.flushPeer(l)
}

// Exit ends the leg's session, if nothing did yet, and tells the Conn
// its reader is done.
func (l *leg) Exit(err error) {
	if err != relay.ErrGraceOver {
		l.end(ending{code: frame.CloseAbnormal, reason: l.name() + " went away: " + err.Error(), vanished: true})
	}
	l.releaseMsg()
	l.end(ending{code: frame.CloseAbnormal, reason: l.name() + " connection closed"})
	l.c.exited(l)
}

// Dropped tells the learner the peer went after silence.
func (l *leg) Dropped(silence time.Duration) { l.c.dropped(l, silence) }

// Ping sends the peer the gateway's keepalive Ping.
func (l *leg) Ping() {
	p := l.Live.NextPing()
	l.writeControl(frame.OpPing, p[:])
}

// Timeout closes the session for the leg's idle or pong timeout.
func (l *leg) Timeout(act timeout.Action) {
	if act == timeout.CloseIdle {
		l.close(frame.CloseGoingAway, "idle timeout")
		l.end(ending{code: frame.CloseGoingAway, reason: l.name() + " idle timeout"})
		return
	}
	if l.resumable() {
		// A client that may come back on another path: no Close, which
		// would end what it can still resume.
		l.end(ending{code: frame.CloseGoingAway, reason: l.name() + " did not answer ping", vanished: true})
		return
	}
	l.close(frame.CloseGoingAway, "ping timeout")
	l.end(ending{code: frame.CloseGoingAway, reason: l.name() + " did not answer ping", vanished: true})
}

// end tells the Conn, once, how this leg's session ended.
func (l *leg) end(how ending) {
	if l.notified {
		return
	}
	l.notified = true
	l.c.ended(l, how)
}

// feed parses the bytes b, which the leg may modify (unmask) in place.
func (l *leg) feed(b []byte) {
	for len(b) > 0 && !l.failed {
		if !l.inFrame {
			n := l.readHeader(b)
			b = b[n:]
			if !l.inFrame {
				return // header incomplete
			}
			if l.remain == 0 {
				l.frameEnd()
			}
			continue
		}
		k := int64(len(b))
		if k > l.remain {
			k = l.remain
		}
		p := b[:k]
		b = b[k:]
		l.remain -= k
		if l.cur.Masked {
			l.maskPos = frame.Mask(l.cur.Mask, l.maskPos, p)
		}
		if l.cur.Op.IsControl() {
			l.ctlN += copy(l.ctl[l.ctlN:], p)
		} else if l.payload(p) && l.remain == 0 {
			l.frameEnd()
		}
		if l.remain == 0 && l.cur.Op.IsControl() {
			l.frameEnd()
		}
	}
}

// readHeader collects and checks a frame header from b and returns how many
// bytes it used.
func (l *leg) readHeader(b []byte) int {
	used := 0
	for {
		need := 2
		if l.hdrN >= 2 {
			need = frame.HeaderSize(l.hdr[0], l.hdr[1])
		}
		if l.hdrN >= need {
			break
		}
		k := copy(l.hdr[l.hdrN:need], b[used:])
		l.hdrN += k
		used += k
		if l.hdrN < need {
			return used
		}
	}
	h, _, err := frame.ParseHeader(l.hdr[:l.hdrN])
	l.hdrN = 0
	if err != nil {
		l.fail(frame.CloseProtocolError, "frame length out of range")
		return used
	}
	if code, why := l.check(h); code != 0 {
		l.fail(code, why)
		return used
	}
	l.cur, l.inFrame, l.remain, l.maskPos, l.ctlN = h, true, h.Length, 0, 0
	if h.Op == frame.OpText || h.Op == frame.OpBinary {
		l.inMsg, l.msgOp, l.msgFlate = true, h.Op, h.Rsv&frame.Rsv1 != 0
		l.msg = getMsg()
	}
	return used
}

// check applies RFC 6455 §5 to a header; it returns a Close code and reason
// for a violation.
func (l *leg) check(h frame.Header) (frame.StatusCode, string) {
	switch {
	case h.Op.IsReserved():
		return frame.CloseProtocolError, "reserved opcode"
	case h.Rsv&^frame.Rsv1 != 0,
		h.Rsv&frame.Rsv1 != 0 && !(l.deflate && (h.Op == frame.OpText || h.Op == frame.OpBinary)):
		return frame.CloseProtocolError, "reserved bits set"
	case h.Op.IsControl() && !h.Fin:
		return frame.CloseProtocolError, "fragmented control frame"
	case h.Op.IsControl() && h.Length > frame.MaxControlPayload:
		return frame.CloseProtocolError, "control frame too long"
	case l.server() && !h.Masked:
		return frame.CloseProtocolError, "client frame not masked"
	case !l.server() && h.Masked:
		return frame.CloseProtocolError, "server frame masked"
	case h.Op == frame.OpContinuation && !l.inMsg:
		return frame.CloseProtocolError, "continuation frame without a message"
	case (h.Op == frame.OpText || h.Op == frame.OpBinary) && l.inMsg:
		return frame.CloseProtocolError, "new message inside a fragmented message"
	}
	if !h.Op.IsControl() {
		limit := l.maxMsg
		flate := h.Rsv&frame.Rsv1 != 0
		if h.Op == frame.OpContinuation {
			flate = l.msgFlate
		}
		if flate {
			limit += limit/8 + 1024 // compressed bytes; the real check is after inflating
		}
		if int64(len(l.msg))+h.Length > limit {
			return frame.CloseTooBig, "message too big"
		}
	}
	return 0, ""
}

// payload takes data-frame payload bytes; it reports false after failing.
func (l *leg) payload(p []byte) bool {
	if l.msgOp == frame.OpText && !l.msgFlate && !l.text.write(p) {
		l.fail(frame.CloseInvalidPayload, "invalid UTF-8 in text message")
		return false
	}
	l.msg = append(l.msg, p...)
	return true
}

// frameEnd handles a complete frame.
func (l *leg) frameEnd() {
	l.inFrame = false
	h := l.cur
	if h.Op.IsControl() {
		l.control(h.Op, l.ctl[:l.ctlN])
		return
	}
	if !h.Fin {
		return
	}
	msg, op := l.msg, l.msgOp
	l.inMsg = false
	if l.msgFlate {
		out, err := decompress(getMsg(), msg, l.maxMsg)
		putMsg(msg)
		msg, l.msg = out, out
		switch {
		case errors.Is(err, errTooBig):
			l.fail(frame.CloseTooBig, "message too big")
			return
		case err != nil:
			l.fail(frame.CloseInvalidPayload, "invalid compressed data")
			return
		}
		if op == frame.OpText && !(l.text.write(msg) && l.text.done()) {
			l.fail(frame.CloseInvalidPayload, "invalid UTF-8 in text message")
			return
		}
	} else if op == frame.OpText && !l.text.done() {
		l.fail(frame.CloseInvalidPayload, "invalid UTF-8 in text message")
		return
	}
	if !l.allowMessage() {
		l.fail(frame.ClosePolicyViolation, "message rate exceeded")
		return
	}
	l.Msgs.Add(1)
	l.Live.Active()
	if !l.CloseReceived() && !l.wroteClose() {
		l.c.message(l, op, msg)
	}
	l.releaseMsg()
}

// allowMessage takes a token from the client's message-rate bucket: it
// holds up to MaxMessageRate messages and refills at that many per second.
func (l *leg) allowMessage() bool {
	rate := l.c.cfg.MaxMessageRate
	if rate <= 0 || !l.server() {
		return true
	}
	now := l.c.cfg.Now()
	if l.tokensAt.IsZero() {
		l.tokens = rate
	} else {
		l.tokens = min(rate, l.tokens+now.Sub(l.tokensAt).Seconds()*rate)
	}
	l.tokensAt = now
	if l.tokens < 1 {
		return false
	}
	l.tokens--
	return true
}

func (l *leg) releaseMsg() {
	if l.msg != nil {
		putMsg(l.msg)
		l.msg = nil
	}
}

// control handles a complete control frame from the peer.
func (l *leg) control(op frame.Opcode, p []byte) {
	switch op {
	case frame.OpPing:
		l.Live.Active()
		l.writeControl(frame.OpPong, p)
	case frame.OpPong:
		if own, rtt := l.Live.Pong(p); own {
			l.ponged(p)
			if rtt > 0 && l.c.cfg.OnPong != nil {
				l.c.cfg.OnPong(l.Side(), rtt)
			}
			return
		}
		l.Live.Active()
	case frame.OpClose:
		code, reason, ok := frame.ParseClose(p)
		if !ok {
			if len(p) > 2 && frame.ValidCloseCode(code) {
				l.fail(frame.CloseInvalidPayload, "invalid UTF-8 in close reason")
			} else {
				l.fail(frame.CloseProtocolError, "invalid close frame")
			}
			return
		}
		if (code == frame.CloseNormal || code == frame.CloseGoingAway) && !l.CloseReceived() && !l.wroteClose() {
			l.c.dropped(l, l.Silence) // the peer closed first: perhaps its idle timer
		}
		l.RecordCloseReceived()
		if !l.wroteClose() {
			// Echo the code (RFC 6455 §5.5.1); 1005 may not be sent.
			echo := code
			if echo == frame.CloseNoStatus {
				echo = frame.CloseNormal
			}
			l.close(echo, "")
		}
		l.end(ending{byPeer: true, code: code, reason: reason})
		l.Live.StartClosing(l.c.cfg.CloseGrace)
	}
}

// fail answers a protocol violation: Close with code, then the peer gets a
// grace period to hang up.
func (l *leg) fail(code frame.StatusCode, reason string) {
	l.failed = true
	l.close(code, reason)
	l.end(ending{code: code, reason: l.name() + " protocol error: " + reason})
}

// close sends a Close frame (once) and starts the grace period.
func (l *leg) close(code frame.StatusCode, reason string) {
	f := frame.AppendClose(nil, code, reason, !l.server(), frame.NewKey(!l.server()))
	l.wmu.Lock()
	if !l.closeSent && !l.writeDead {
		l.pushesFirstLocked() // pushes accepted before the Close go before it
		l.closeSent = true
		l.writeLocked(f)
		l.RecordCloseSent()
	}
	l.wmu.Unlock()
	l.Live.StartClosing(l.c.cfg.CloseGrace)
}

func (l *leg) wroteClose() bool {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	return l.closeSent
}

func (l *leg) writeControl(op frame.Opcode, p []byte) {
	var buf [frame.MaxHeaderSize + frame.MaxControlPayload]byte
	f := frame.AppendFrame(buf[:0], op, p, !l.server(), frame.NewKey(!l.server()))
	l.wmu.Lock()
	if !l.closeSent && !l.detached && l.writeLocked(f) && op == frame.OpPing {
		l.sent.pings++
	}
	l.wmu.Unlock()
}

// writeMessage sends a whole message as one frame now, compressed when the
// client leg negotiated it, masked (in a copy) towards a backend, so p is
// left as it was and can be sent again after a reconnect. It reports false
// when the message could not be written.
func (l *leg) writeMessage(op frame.Opcode, p []byte) bool {
	return l.send(op, p, false)
}

// maxBatch bounds the frames an leg holds back for one write.
const maxBatch = 64 << 10

// queueMessage is writeMessage for a message relayed from the peer's
// reader: a small one joins the frames held until that reader has handled
// all it read (flush), so the messages of one read go out in one write
// instead of one write each. It reports false when the message cannot be
// sent; one that is queued and then fails to go out is lost like one
// written to a peer that dies after the write.
func (l *leg) queueMessage(op frame.Opcode, p []byte) bool {
	return l.send(op, p, len(p) <= maxBatch/4)
}

func (l *leg) send(op frame.Opcode, p []byte, queue bool) bool {
	if l.resumable() {
		return l.sendResumable(op, p)
	}
	h, p, done := l.prepare(op, p)
	defer done()
	l.wmu.Lock()
	defer l.wmu.Unlock()
	if l.closeSent || l.writeDead {
		return false
	}
	if !l.pushesFirstLocked() {
		return false
	}
	if !queue {
		if h.Masked {
			masked := append(getMsg(), p...)
			defer putMsg(masked)
			frame.Mask(h.Mask, 0, masked)
			p = masked
		}
		return l.writeLocked(l.hdrOut[:frame.PutHeader(l.hdrOut[:], h)], p)
	}
	return l.holdLocked(h, p)
}

// resumable reports whether this is a client leg whose session may be
// resumed.
func (l *leg) resumable() bool { return l.c.cfg.Resume && l.Side() == relay.Client }

// sendResumable writes a message to a client leg that may be resumed: on
// its own (no batching, so that its offset is where its last record ends)
// and recorded until the client is known to have it. A message that
// cannot be written to a connection that failed is recorded all the same:
// it waits for the next client. false: the session detached from this leg,
// or the client is closing.
func (l *leg) sendResumable(op frame.Opcode, orig []byte) bool {
	h, p, done := l.prepare(op, orig)
	defer done()
	l.wmu.Lock()
	defer l.wmu.Unlock()
	if l.detached || l.closeSent {
		return false
	}
	if !l.pushesFirstLocked() && !l.writeDead {
		return false
	}
	l.writeRecordedLocked(h, p, op, orig)
	return true
}

// appendLocked frames a message into the held frames; the caller holds
// wmu.
func (l *leg) appendLocked(op frame.Opcode, p []byte) bool {
	h, p, done := l.prepare(op, p)
	defer done()
	return l.holdLocked(h, p)
}

// holdLocked adds a prepared frame to the held frames, writing them once
// they reach maxBatch; the caller holds wmu.
func (l *leg) holdLocked(h frame.Header, p []byte) bool {
	if l.out == nil {
		l.out = getMsg()
	}
	l.out = append(l.out, l.hdrOut[:frame.PutHeader(l.hdrOut[:], h)]...)
	start := len(l.out)
	l.out = append(l.out, p...)
	if h.Masked {
		frame.Mask(h.Mask, 0, l.out[start:])
	}
	if len(l.out) >= maxBatch {
		return l.flushLocked()
	}
	return true
}

// prepare compresses a message if the leg negotiated it and returns its
// frame header and payload; done gives the compressed copy back.
func (l *leg) prepare(op frame.Opcode, p []byte) (frame.Header, []byte, func()) {
	h := frame.Header{Fin: true, Op: op, Masked: !l.server()}
	done := func() {}
	if l.deflate && len(p) >= minCompress {
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
func (l *leg) flush() {
	l.wmu.Lock()
	l.flushLocked()
	l.wmu.Unlock()
}

func (l *leg) flushLocked() bool {
	if l.out == nil {
		return !l.writeDead
	}
	out := l.out
	l.out = nil
	ok := l.writeRaw(out)
	putMsg(out)
	return ok
}

// writeLocked writes bufs after any frames held for a flush, which must go
// first. The caller holds wmu.
func (l *leg) writeLocked(bufs ...[]byte) bool {
	if !l.flushLocked() {
		return false
	}
	return l.writeRaw(bufs...)
}

func (l *leg) writeRaw(bufs ...[]byte) bool {
	if l.writeDead {
		return false
	}
	if l.Write(bufs) != nil {
		l.writeDead = true
		return false
	}
	return true
}

// Message buffers are pooled so that an idle leg holds none.
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
