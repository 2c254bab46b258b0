package overhttp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/caddy-websocket/caddy-websocket/internal/frame"
	"github.com/caddy-websocket/caddy-websocket/internal/relay"
)

// ErrUnreachable wraps the error of a request whose connection could not
// be made: another upstream may be tried.
var ErrUnreachable = errors.New("backend unreachable")

// ErrTimeout wraps the error of a request the backend did not answer
// within the timeout.
var ErrTimeout = errors.New("backend did not answer")

// Sink is the client's side of the connection, where the backend's events
// go. Its methods may be called from the session's request goroutine.
type Sink interface {
	// Deliver sends the client a message or control frame (text, binary,
	// ping, pong); p is only valid during the call.
	Deliver(op frame.Opcode, p []byte)
	// FlushClient writes what Deliver held back, once per response.
	FlushClient()
	// BackendEnded ends the client's session because the backend did: with
	// its CLOSE (byPeer, its code), or because it failed (code 1011 and
	// why).
	BackendEnded(byPeer bool, code frame.StatusCode, reason string)
}

// Config is how a session talks to its backend.
type Config struct {
	// Client sends the requests; its transport dials the backend.
	Client *http.Client
	// URL is where every event request goes: the backend's scheme and
	// address with the client's request path and query.
	URL string
	// Host is the Host header of the requests (the client's).
	Host string
	// Header is sent with every request: the client's request headers as
	// forwarded, without Meta-* and Connection-Id.
	Header http.Header
	// ID is the Connection-Id.
	ID string
	// Timeout bounds each request, answer included. Default 10s.
	Timeout time.Duration
	// MaxPending bounds the bytes of client messages held while a request
	// is in flight; past it the client's reader waits (backpressure).
	// Default 1 MiB.
	MaxPending int
	// MaxContent bounds an event's content from the backend. Default 1 MiB.
	MaxContent int
	// MinKeepAlive is the floor of a backend's Keep-Alive-Interval.
	// Default 20s, as Pushpin has it.
	MinKeepAlive time.Duration
	// OnControl is told of the backend's GRIP control messages.
	OnControl func(Control)
	// OnError is told why the session failed (for the log).
	OnError func(error)
}

// Session is the backend side of one client's WebSocket in
// WebSocket-over-HTTP: one request in flight at a time, the client's
// messages batched into the next one. It holds no goroutine while no
// request is in flight.
type Session struct {
	cfg  Config
	sink Sink
	grip *Grip

	bytes, msgs atomic.Int64
	lastRead    atomic.Int64 // unix nanos of the last answer
	lastWrite   atomic.Int64 // unix nanos of the last request

	mu      sync.Mutex
	room    *sync.Cond // signalled when pending is taken or the session is done
	meta    http.Header
	pending []Event
	size    int
	// The first replayN events of pending (replayBytes of content) are
	// what the backend kept back with Content-Bytes-Accepted: sent again
	// with the next request, which waits for new data.
	replayN     int
	replayBytes int
	final       *Event // CLOSE or DISCONNECT, sent after pending
	inflight    bool
	done        bool // no more requests: the final event went, or the backend ended
	peerClose   bool // the backend's CLOSE came; the client's echo is the final event
	initial     []Event
	started     bool // the OPEN answer's events went to the client: requests may go
	keepAlive   time.Duration
	timer       *time.Timer
}

// Connect sends the OPEN request. On a 200 answer whose events start with
// OPEN it returns the session, ready to Start, and the answer (its headers
// are for the client's handshake: the caller strips the protocol's own
// with PrivateHeaders). Any other answer comes back as res with a nil
// session and nil error, for the caller to pass to the client; err is for
// a backend that could not be asked or gave an invalid answer.
func Connect(ctx context.Context, cfg Config) (s *Session, res *http.Response, body []byte, err error) {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = 1 << 20
	}
	if cfg.MaxContent <= 0 {
		cfg.MaxContent = 1 << 20
	}
	if cfg.MinKeepAlive <= 0 {
		cfg.MinKeepAlive = 20 * time.Second
	}
	s = &Session{cfg: cfg, meta: http.Header{}}
	s.room = sync.NewCond(&s.mu)
	res, body, err = s.post(ctx, Append(nil, Event{Type: Open}), s.meta, 0)
	if err != nil {
		return nil, nil, nil, err
	}
	if res.StatusCode != http.StatusOK {
		return nil, res, body, nil
	}
	if err := checkType(res); err != nil {
		return nil, nil, nil, err
	}
	events, err := Decode(body, cfg.MaxContent)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("backend's answer to OPEN: %v", err)
	}
	if len(events) == 0 || events[0].Type != Open {
		if len(events) > 0 && events[0].Type == Close {
			// A refusal in the protocol's own terms: no OPEN, a CLOSE.
			return nil, res, body, nil
		}
		return nil, nil, nil, errors.New("backend's answer to OPEN does not start with an OPEN event")
	}
	s.apply(res.Header)
	if g, ok := ParseGrip(res.Header.Values("Sec-WebSocket-Extensions")); ok {
		s.grip = &g
	}
	s.initial = events[1:]
	return s, res, body, nil
}

// RefusalReason is the reason of an OPEN answer that refused the client
// with a CLOSE event instead of an OPEN, or "".
func RefusalReason(body []byte) (code uint16, reason string, ok bool) {
	events, err := Decode(body, 0)
	if err != nil || len(events) == 0 || events[0].Type != Close {
		return 0, "", false
	}
	code, reason, _ = ParseClose(events[0].Content)
	return code, reason, true
}

// PrivateHeaders removes from an OPEN answer's headers what is for the
// gateway, not the client.
func PrivateHeaders(h http.Header) {
	for k := range h {
		if strings.HasPrefix(k, "Set-Meta-") {
			delete(h, k)
		}
	}
	for _, k := range []string{"Content-Type", "Content-Length", "Keep-Alive-Interval", "Content-Bytes-Accepted", "Sec-Websocket-Extensions"} {
		h.Del(k)
	}
}

// Hangup tells the backend, with a DISCONNECT, that a session it accepted
// will not start: the client went, or the gateway refused it after OPEN
// (or OPEN was a health check). Call it instead of Start, not after.
func (s *Session) Hangup(ctx context.Context) error {
	s.mu.Lock()
	if s.done || s.started {
		s.mu.Unlock()
		return nil
	}
	s.done = true
	s.mu.Unlock()
	res, _, err := s.post(ctx, Append(nil, Event{Type: Disconnect}), s.meta.Clone(), 0)
	if err == nil && res.StatusCode != http.StatusOK {
		err = fmt.Errorf("backend answered %s", res.Status)
	}
	return err
}

// Grip reports whether the backend turned GRIP on, and its settings.
func (s *Session) Grip() (Grip, bool) {
	if s.grip == nil {
		return Grip{}, false
	}
	return *s.grip, true
}

// OnControl sets where the backend's GRIP control messages go; call it
// before Start.
func (s *Session) OnControl(f func(Control)) { s.cfg.OnControl = f }

// Start binds the session to the client and delivers the events that came
// with the OPEN answer.
func (s *Session) Start(sink Sink) {
	s.sink = sink
	initial := s.initial
	s.initial = nil
	ended := s.deliver(initial)
	// Requests wait for the OPEN answer's events to be delivered, so that
	// an answer to a message cannot overtake them.
	s.mu.Lock()
	s.started = true
	s.kickLocked(false)
	if !ended {
		s.armLocked()
	}
	s.mu.Unlock()
}

// Send queues a client message (text or binary) for the next request; p
// is copied. While MaxPending bytes wait behind a request in flight, Send
// waits for it: the client's reader stops, and TCP pushes back. It
// reports false once the session is over.
func (s *Session) Send(op frame.Opcode, p []byte) bool {
	t := Text
	if op == frame.OpBinary {
		t = Binary
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.size >= s.cfg.MaxPending && s.inflight && !s.done {
		s.room.Wait()
	}
	if s.done || s.final != nil {
		return false
	}
	s.pending = append(s.pending, Event{Type: t, Content: append(make([]byte, 0, len(p)), p...)})
	s.size += len(p)
	return true
}

// Flush starts a request for what is queued, unless one is in flight (its
// end starts the next).
func (s *Session) Flush() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.kickLocked(false)
}

// Close tells the backend the client's session ended: a CLOSE with the
// client's code (an answer to the backend's own CLOSE, if it sent one), or
// DISCONNECT for a client that vanished (code 1006).
func (s *Session) Close(code frame.StatusCode, reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done || s.final != nil {
		return
	}
	e := Event{Type: Disconnect}
	if code != frame.CloseAbnormal {
		e = Event{Type: Close, Content: CloseContent(uint16(code), reason)}
	}
	s.final = &e
	s.kickLocked(false)
}

// Stats is the backend side's live view: what it sent (events), and when
// the last request went and the last answer came.
func (s *Session) Stats() relay.LegView {
	var st relay.LegView
	st.Counts = s.Counts()
	if n := s.lastRead.Load(); n != 0 {
		st.LastRead = time.Unix(0, n)
	}
	if n := s.lastWrite.Load(); n != 0 {
		st.LastWrite = time.Unix(0, n)
	}
	return st
}

// Counts returns the bytes and messages the backend sent.
func (s *Session) Counts() relay.Counts {
	return relay.Counts{Bytes: s.bytes.Load(), Messages: s.msgs.Load()}
}

// kickLocked starts the request goroutine when there is something to send
// (or poll is set: the keep-alive interval is up) and none is in flight.
func (s *Session) kickLocked(poll bool) {
	if s.inflight || s.done || !s.started {
		return
	}
	if !poll && !s.newDataLocked() && s.final == nil {
		return
	}
	s.inflight = true
	if s.timer != nil {
		s.timer.Stop()
	}
	go s.run()
}

// newDataLocked reports whether pending holds more than what the backend
// kept back: a backend that accepts nothing is not asked again until there
// is more (or its keep-alive poll is due).
func (s *Session) newDataLocked() bool {
	return len(s.pending) > s.replayN || s.size > s.replayBytes
}

// armLocked sets the keep-alive poll: with Keep-Alive-Interval, the backend
// gets a request (empty, if nothing is queued) at least that often, its
// chance to send events.
func (s *Session) armLocked() {
	if s.keepAlive <= 0 || s.done {
		return
	}
	if s.timer == nil {
		s.timer = time.AfterFunc(s.keepAlive, func() {
			s.mu.Lock()
			s.kickLocked(true)
			s.mu.Unlock()
		})
		return
	}
	s.timer.Reset(s.keepAlive)
}

// run sends requests until nothing is left to send.
func (s *Session) run() {
	first := true
	for {
		s.mu.Lock()
		batch, final, replayed := s.pending, s.final, s.replayBytes
		if final == nil && !first && !s.newDataLocked() {
			s.inflight = false
			s.armLocked()
			s.mu.Unlock()
			return
		}
		first = false
		s.pending, s.size, s.replayN, s.replayBytes = nil, 0, 0, 0
		if final != nil {
			s.done = true
		}
		meta := s.meta.Clone()
		s.room.Broadcast()
		s.mu.Unlock()

		var body []byte
		for _, e := range batch {
			body = Append(body, e)
		}
		if final != nil {
			body = Append(body, *final)
		}
		res, rbody, err := s.post(context.Background(), body, meta, replayed)
		if err == nil && res.StatusCode != http.StatusOK {
			err = fmt.Errorf("backend answered %s", res.Status)
		}
		if err == nil {
			err = checkType(res)
		}
		var events []Event
		if err == nil {
			events, err = Decode(rbody, s.cfg.MaxContent)
		}
		var rest []Event
		var restBytes int
		if err == nil {
			rest, restBytes, err = keptBack(res.Header, batch)
		}
		if final != nil {
			// The client is gone: nothing more to deliver, and what the
			// backend keeps back of this last request is its own.
			return
		}
		if err == nil && restBytes >= s.cfg.MaxPending {
			err = fmt.Errorf("backend kept back %d bytes with Content-Bytes-Accepted, the pending limit", restBytes)
		}
		if err != nil {
			s.fail(err)
			return
		}
		s.mu.Lock()
		s.apply(res.Header)
		if len(rest) > 0 {
			s.pending = append(rest, s.pending...)
			s.size += restBytes
			s.replayN, s.replayBytes = len(rest), restBytes
		}
		s.mu.Unlock()
		if s.deliver(events) {
			s.mu.Lock()
			s.inflight = false
			s.room.Broadcast()
			s.mu.Unlock()
			return
		}
	}
}

// keptBack applies an answer's Content-Bytes-Accepted (Pushpin's flow
// control): the backend took that many bytes of the batch's content, from
// the front; rest is what it kept back, the tail of a message split where
// the count ends, for the next request. Without the header (or with a
// value that is not a count, as Pushpin reads it) everything was taken.
func keptBack(h http.Header, batch []Event) (rest []Event, restBytes int, err error) {
	v := h.Get("Content-Bytes-Accepted")
	if v == "" {
		return nil, 0, nil
	}
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n < 0 {
		return nil, 0, nil
	}
	total := 0
	for _, e := range batch {
		total += len(e.Content)
	}
	if n > total {
		return nil, 0, fmt.Errorf("backend's Content-Bytes-Accepted %d is more than the %d bytes sent", n, total)
	}
	for i, e := range batch {
		if n >= len(e.Content) {
			n -= len(e.Content)
			continue
		}
		rest = append([]Event{{Type: e.Type, Content: e.Content[n:]}}, batch[i+1:]...)
		for _, r := range rest {
			restBytes += len(r.Content)
		}
		return rest, restBytes, nil
	}
	return nil, 0, nil
}

// fail ends the session for a backend error: the client gets 1011.
func (s *Session) fail(err error) {
	s.mu.Lock()
	wasDone := s.done
	s.done, s.inflight = true, false
	if s.timer != nil {
		s.timer.Stop()
	}
	s.room.Broadcast()
	s.mu.Unlock()
	if wasDone {
		return
	}
	if s.cfg.OnError != nil {
		s.cfg.OnError(err)
	}
	s.sink.BackendEnded(false, frame.CloseInternalError, err.Error())
}

// deliver hands the backend's events to the client, in order; it reports
// true when one of them ended the session.
func (s *Session) deliver(events []Event) (ended bool) {
	defer s.sink.FlushClient()
	for _, e := range events {
		s.bytes.Add(int64(len(e.Content)))
		switch e.Type {
		case Text:
			p := e.Content
			if s.grip != nil {
				msg, ctl, err := s.grip.Split(p)
				if err != nil {
					s.fail(err)
					return true
				}
				if ctl != nil {
					if s.cfg.OnControl != nil {
						s.cfg.OnControl(*ctl)
					}
					continue
				}
				if msg == nil {
					continue // no prefix: not for the client (GRIP)
				}
				p = msg
			}
			if !utf8.Valid(p) {
				s.fail(errors.New("backend sent a TEXT event that is not UTF-8"))
				return true
			}
			s.msgs.Add(1)
			s.sink.Deliver(frame.OpText, p)
		case Binary:
			s.msgs.Add(1)
			s.sink.Deliver(frame.OpBinary, e.Content)
		case Ping, Pong:
			if len(e.Content) > frame.MaxControlPayload {
				s.fail(fmt.Errorf("backend sent a %s event of %d bytes (at most %d)", e.Type, len(e.Content), frame.MaxControlPayload))
				return true
			}
			op := frame.OpPing
			if e.Type == Pong {
				op = frame.OpPong
			}
			s.sink.Deliver(op, e.Content)
		case Close:
			code, reason, ok := ParseClose(e.Content)
			if !ok {
				code = uint16(frame.CloseNoStatus)
			}
			s.mu.Lock()
			s.peerClose = true
			if s.timer != nil {
				s.timer.Stop()
			}
			s.mu.Unlock()
			s.sink.BackendEnded(true, frame.StatusCode(code), reason)
			return true
		case Disconnect:
			s.mu.Lock()
			s.done = true
			s.mu.Unlock()
			s.sink.BackendEnded(false, frame.CloseInternalError, "backend sent DISCONNECT")
			return true
		case Open:
			s.fail(errors.New("backend sent OPEN on an open connection"))
			return true
		}
		// Other event types are not the protocol's: ignored, as a newer
		// backend's additions should be.
	}
	return false
}

// apply takes the protocol's response headers: Set-Meta-* and
// Keep-Alive-Interval (seconds; at least MinKeepAlive).
func (s *Session) apply(h http.Header) {
	for k, v := range h {
		if name, ok := strings.CutPrefix(k, "Set-Meta-"); ok && name != "" {
			if len(v) == 0 || v[0] == "" {
				s.meta.Del(name)
			} else {
				s.meta.Set(name, v[0])
			}
		}
	}
	if v := h.Get("Keep-Alive-Interval"); v != "" {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err == nil && n > 0 {
			s.keepAlive = max(time.Duration(n)*time.Second, s.cfg.MinKeepAlive)
		} else {
			s.keepAlive = 0
		}
	}
}

// post sends one request of events and reads its answer, within the
// request timeout; replayed is how many bytes of its content at the front
// the backend kept back last time (Content-Bytes-Replayed).
func (s *Session) post(ctx context.Context, body []byte, meta http.Header, replayed int) (*http.Response, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	res, reused, err := s.send(ctx, body, meta, replayed)
	if err != nil && reused && ctx.Err() == nil {
		// The backend closed a kept-alive connection as the request went
		// out on it (its idle timeout): send again, on a new one.
		res, _, err = s.send(ctx, body, meta, replayed)
	}
	if err != nil {
		return nil, nil, s.reason(ctx, err)
	}
	defer res.Body.Close()
	limit := int64(4*s.cfg.MaxContent + 64<<10)
	rbody, err := io.ReadAll(io.LimitReader(res.Body, limit+1))
	if err != nil {
		return nil, nil, s.reason(ctx, err)
	}
	if int64(len(rbody)) > limit {
		return nil, nil, fmt.Errorf("backend's answer is over %d bytes", limit)
	}
	s.lastRead.Store(time.Now().UnixNano())
	return res, rbody, nil
}

// send makes one attempt; reused says it went out on a kept-alive
// connection.
func (s *Session) send(ctx context.Context, body []byte, meta http.Header, replayed int) (res *http.Response, reused bool, err error) {
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused }})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return nil, false, err
	}
	req.Header = s.cfg.Header.Clone()
	if req.Header == nil {
		req.Header = http.Header{}
	}
	for k, v := range meta {
		req.Header["Meta-"+k] = v
	}
	req.Host = s.cfg.Host
	req.Header.Set("Connection-Id", s.cfg.ID)
	req.Header.Set("Content-Type", ContentType)
	req.Header.Set("Accept", ContentType)
	if replayed > 0 {
		req.Header.Set("Content-Bytes-Replayed", strconv.Itoa(replayed))
	}
	s.lastWrite.Store(time.Now().UnixNano())
	res, err = s.cfg.Client.Do(req)
	return res, reused, err
}

// reason turns a request error into the short cause a Close reason (at
// most 123 bytes) and a log line can carry.
func (s *Session) reason(ctx context.Context, err error) error {
	if ctx.Err() == context.DeadlineExceeded {
		return fmt.Errorf("%w within %v", ErrTimeout, s.cfg.Timeout)
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "dial" {
		var se *os.SyscallError
		if errors.As(oe.Err, &se) {
			return fmt.Errorf("%w: %v", ErrUnreachable, se.Err)
		}
		return fmt.Errorf("%w: %v", ErrUnreachable, oe.Err)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Errorf("backend request failed: %v", ue.Err)
	}
	return err
}

func checkType(res *http.Response) error {
	ct := res.Header.Get("Content-Type")
	if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != ContentType {
		return fmt.Errorf("backend answered with Content-Type %q, not %s", ct, ContentType)
	}
	return nil
}
