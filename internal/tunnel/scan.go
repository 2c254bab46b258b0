package tunnel

import (
	"net"
	"sync"

	"github.com/caddy-websocket/caddy-websocket/internal/frame"
)

// scanner follows the frame structure of one direction of the stream as it
// is relayed chunk by chunk. Payload bytes are only counted, never copied;
// the only bytes it keeps are a header split across two reads, or a Pong or
// Close frame (at most 139 bytes) that must be seen whole before the gateway
// knows whether to forward it.
type scanner struct {
	remain int64        // payload bytes left in the current streamed frame
	cur    frame.Header // its header
	carry  *carry       // borrowed while a unit is split across reads
	carryN int
	broken bool // an unparseable header: relay the rest blindly
}

// carry holds a header, or a held frame, split across reads. Units are
// rarely split, so the buffer is pooled rather than kept by every idle
// connection.
type carry [frame.MaxHeaderSize + frame.MaxControlPayload]byte

var (
	carryPool = sync.Pool{New: func() any { return new(carry) }}
	segsPool  = sync.Pool{New: func() any { return new(net.Buffers) }}
)

// held reports whether a frame is kept whole before relaying: Pongs may be
// answers to the gateway's pings, which are consumed; Close frames carry the
// code to log and end the stream.
func held(h frame.Header) bool {
	return (h.Op == frame.OpPong || h.Op == frame.OpClose) && h.Length <= frame.MaxControlPayload
}

// scan scans b, read from src, and writes it on to src.other.
func (s *scanner) scan(src *leg, b []byte) {
	dst := src.other
	if s.broken {
		dst.write(net.Buffers{b}, -1, true, false)
		return
	}
	sp := segsPool.Get().(*net.Buffers)
	segs := (*sp)[:0]
	defer func() {
		clear(segs) // hold no reference to the read buffer
		*sp = segs[:0]
		segsPool.Put(sp)
	}()
	boundary := -1
	mark := dst.hasPend.Load() // only split the output where a ping waits
	var closeFrame, active bool
	i, run := 0, 0
	flushRun := func(end int) {
		if end > run {
			segs = append(segs, b[run:end])
			active = true
		}
		run = end
	}
	atBoundary := func() {
		if mark && boundary < 0 {
			flushRun(i)
			boundary = len(segs)
		}
	}

	// Finish a unit that began in an earlier read.
	if s.carryN > 0 {
		for {
			want := s.unitSize()
			k := copy(s.carry[s.carryN:want], b[i:])
			s.carryN += k
			i += k
			if s.carryN < want {
				return // b is used up and the unit is still incomplete
			}
			if s.unitSize() == want {
				break // complete: the header did not ask for more
			}
		}
		run = i
		unit := s.carry[:s.carryN]
		s.carryN = 0
		h, hs, err := frame.ParseHeader(unit)
		if err != nil {
			s.broken = true
			dst.write(net.Buffers{unit, b[i:]}, -1, true, false)
			s.keep(nil)
			return
		}
		if held(h) {
			if !s.heldFrame(src, h, unit[hs:]) {
				segs = append(segs, unit)
				active = true
				closeFrame = closeFrame || h.Op == frame.OpClose
			}
			s.frameDone(src, h)
		} else {
			atBoundary()
			segs = append(segs, unit)
			active = true
			s.cur, s.remain = h, h.Length
			if s.remain == 0 {
				s.frameDone(src, h)
			}
		}
	}

	tail := len(b)
	for i < len(b) {
		if s.remain > 0 {
			k := int64(len(b) - i)
			if k > s.remain {
				k = s.remain
			}
			i += int(k)
			s.remain -= k
			if s.remain == 0 {
				s.frameDone(src, s.cur)
			}
			continue
		}
		atBoundary()
		rest := b[i:]
		if len(rest) < 2 || len(rest) < frame.HeaderSize(rest[0], rest[1]) {
			tail = i
			break
		}
		h, hs, err := frame.ParseHeader(rest)
		if err != nil {
			s.broken = true
			i = len(b)
			break
		}
		if held(h) {
			total := hs + int(h.Length)
			if len(rest) < total {
				tail = i
				break
			}
			if s.heldFrame(src, h, rest[hs:total]) {
				flushRun(i)
				run = i + total
			} else if h.Op == frame.OpClose {
				closeFrame = true
			}
			i += total
			s.frameDone(src, h)
			continue
		}
		i += hs
		s.cur, s.remain = h, h.Length
		if s.remain == 0 {
			s.frameDone(src, h)
		}
	}
	flushRun(tail)
	if s.remain == 0 && boundary < 0 && !s.broken {
		boundary = len(segs)
	}
	if active {
		src.Live.Active()
	}
	dst.write(segs, boundary, s.remain > 0 || s.broken, closeFrame)
	// Only now may the carry buffer be overwritten: segs pointed into it.
	s.keep(b[tail:])

	if closeFrame {
		// src sent Close; once dst's answer has gone back, src's closing
		// handshake is complete.
		if src.wroteClose() {
			src.StartClosing(src.c.cfg.CloseGrace)
		}
		if dst.CloseReceived() {
			dst.StartClosing(src.c.cfg.CloseGrace)
		}
	}
}

// keep carries the start of a split unit over to the next read, in a
// pooled buffer that goes back as soon as nothing is carried.
func (s *scanner) keep(rest []byte) {
	if len(rest) == 0 {
		s.carryN = 0
		if s.carry != nil {
			carryPool.Put(s.carry)
			s.carry = nil
		}
		return
	}
	if s.carry == nil {
		s.carry = carryPool.Get().(*carry)
	}
	s.carryN = copy(s.carry[:], rest)
}

// unitSize is how many bytes the carried unit needs: the header, and for a
// held frame its payload too.
func (s *scanner) unitSize() int {
	if s.carryN < 2 {
		return 2
	}
	hs := frame.HeaderSize(s.carry[0], s.carry[1])
	if s.carryN < hs {
		return hs
	}
	h, _, err := frame.ParseHeader(s.carry[:hs])
	if err != nil || !held(h) {
		return hs
	}
	return hs + int(h.Length)
}

// heldFrame looks at a complete Pong or Close from src and reports whether
// the gateway consumes it (a Pong answering its own Ping).
func (s *scanner) heldFrame(src *leg, h frame.Header, payload []byte) bool {
	var p [frame.MaxControlPayload]byte
	n := copy(p[:], payload)
	if h.Masked {
		frame.Mask(h.Mask, 0, p[:n])
	}
	switch h.Op {
	case frame.OpPong:
		return src.isOwnPong(p[:n])
	case frame.OpClose:
		code, reason, _ := frame.ParseClose(p[:n])
		if (code == frame.CloseNormal || code == frame.CloseGoingAway) && !src.CloseReceived() && !src.wroteClose() {
			// The peer closed first: perhaps its idle timer.
			src.c.dropped(src.Side(), src.Silence)
		}
		src.RecordCloseReceived()
		src.c.record(src.Side().String(), code, reason)
	}
	return false
}

// frameDone counts a finished frame.
func (s *scanner) frameDone(src *leg, h frame.Header) {
	if h.Fin && !h.Op.IsControl() {
		src.Msgs.Add(1)
	}
}
