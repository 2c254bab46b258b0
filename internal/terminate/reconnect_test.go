package terminate

import (
	"bufio"
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/caddy-websocket/caddy-websocket/internal/frame"
	"github.com/caddy-websocket/caddy-websocket/internal/relay"
	"github.com/caddy-websocket/caddy-websocket/internal/tcptest"
	"github.com/caddy-websocket/caddy-websocket/internal/wstest"
)

// The reconnect state machine, driven over real loopback sockets: the
// test plays the client (masked frames) and each backend (unmasked), the
// Conn is the gateway between them.

func peerOf(c net.Conn, masked bool) *wstest.Peer {
	return &wstest.Peer{Conn: c, R: bufio.NewReader(c), Masked: masked}
}

// redialer hands the Conn a new backend connection each time the test
// allows it, and the test the peer end of it.
type redialer struct {
	t       *testing.T
	calls   chan struct{}     // one per Redial call
	allow   chan error        // nil: connect; an error: fail with it
	backend chan *wstest.Peer // the peer end of each connection made
}

func newRedialer(t *testing.T) *redialer {
	return &redialer{t: t, calls: make(chan struct{}, 16), allow: make(chan error, 16), backend: make(chan *wstest.Peer, 16)}
}

func (r *redialer) redial(ctx context.Context) (net.Conn, []byte, error) {
	r.calls <- struct{}{}
	select {
	case err := <-r.allow:
		if err != nil {
			return nil, nil, err
		}
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
	g, p := tcptest.Pair(r.t)
	r.backend <- peerOf(p, false)
	return g, nil, nil
}

type setup struct {
	conn    *Conn
	client  *wstest.Peer
	backend *wstest.Peer
	closed  chan relay.Summary
	tries   chan error
}

func start(t *testing.T, cfg Config) *setup {
	cg, cp := tcptest.Pair(t)
	bg, bp := tcptest.Pair(t)
	s := &setup{client: peerOf(cp, true), backend: peerOf(bp, false),
		closed: make(chan relay.Summary, 1), tries: make(chan error, 16)}
	cfg.OnClose = func(sum relay.Summary) { s.closed <- sum }
	cfg.OnReconnect = func(_ int, err error) { s.tries <- err }
	s.conn = New(cg, bg, cfg)
	s.conn.Start(nil, nil)
	return s
}

func expectMessage(t *testing.T, p *wstest.Peer, want string) {
	t.Helper()
	f, err := p.ReadFrame(5 * time.Second)
	if err != nil {
		t.Fatalf("waiting for %q: %v", want, err)
	}
	if f.Op != frame.OpText || string(f.Payload) != want {
		t.Fatalf("got op %v %q, want text %q", f.Op, f.Payload, want)
	}
}

func expectClose(t *testing.T, p *wstest.Peer, code frame.StatusCode, reason string) {
	t.Helper()
	f, err := p.ReadFrame(5 * time.Second)
	if err != nil {
		t.Fatalf("waiting for Close %d: %v", code, err)
	}
	if f.Op != frame.OpClose || len(f.Payload) < 2 {
		t.Fatalf("got op %v %q, want Close %d", f.Op, f.Payload, code)
	}
	got := frame.StatusCode(int(f.Payload[0])<<8 | int(f.Payload[1]))
	if got != code || string(f.Payload[2:]) != reason {
		t.Fatalf("got Close %d %q, want %d %q", got, f.Payload[2:], code, reason)
	}
}

func summary(t *testing.T, s *setup) relay.Summary {
	t.Helper()
	select {
	case sum := <-s.closed:
		return sum
	case <-time.After(5 * time.Second):
		t.Fatal("OnClose was not called")
	}
	return relay.Summary{}
}

func send(t *testing.T, p *wstest.Peer, msgs ...string) {
	t.Helper()
	for _, m := range msgs {
		if err := p.WriteFrame(frame.OpText, []byte(m)); err != nil {
			t.Fatal(err)
		}
	}
}

// A backend that vanishes is re-dialled; what the client sent in the gap
// reaches the new backend first and in order, and both directions work
// afterwards.
func TestReconnectHoldsTheGap(t *testing.T) {
	r := newRedialer(t)
	s := start(t, Config{Reconnect: true, Redial: r.redial})
	send(t, s.client, "a")
	expectMessage(t, s.backend, "a")

	s.backend.Close() // no Close frame: a crash
	<-r.calls
	send(t, s.client, "b", "c")
	// The gap's messages are held, not written anywhere yet.
	if got := s.conn.Stats().Reconnects; got != 0 {
		t.Fatalf("reconnects during the gap: %d", got)
	}
	time.Sleep(50 * time.Millisecond) // let the gateway read them into the gap
	r.allow <- nil
	b2 := <-r.backend
	if err := <-s.tries; err != nil {
		t.Fatalf("attempt reported %v", err)
	}
	expectMessage(t, b2, "b")
	expectMessage(t, b2, "c")
	send(t, s.client, "d")
	expectMessage(t, b2, "d")
	send(t, b2, "from the new backend")
	expectMessage(t, s.client, "from the new backend")
	if got := s.conn.Stats().Reconnects; got != 1 {
		t.Fatalf("reconnects: %d, want 1", got)
	}

	if err := s.client.WriteFrame(frame.OpClose, wstest.ClosePayload(1000, "bye")); err != nil {
		t.Fatal(err)
	}
	expectClose(t, b2, 1000, "bye")
	b2.WriteFrame(frame.OpClose, wstest.ClosePayload(1000, "bye"))
	b2.Close() // the server ends the TCP connection (RFC 6455 §7.1.1)
	expectClose(t, s.client, 1000, "")
	s.client.Close()
	sum := summary(t, s)
	if sum.Closer != "client" || sum.Code != 1000 || sum.Reconnects != 1 {
		t.Fatalf("summary: %+v", sum)
	}
	// The backend counters add up over both backends: "a", "b", "c", "d"
	// were sent to backends, one message came back.
	if sum.Legs.Client.Messages != 4 || sum.Legs.Backend.Messages != 1 {
		t.Fatalf("counts: client %+v backend %+v", sum.Legs.Client, sum.Legs.Backend)
	}
}

// A backend that restarts on purpose (1012) is hidden too; one that ends
// the session (1000, 1008) is not: the client gets its Close and no
// re-dial happens.
func TestReconnectOnlyForUnplannedEnds(t *testing.T) {
	for _, tc := range []struct {
		code   int
		redial bool
	}{{1012, true}, {1001, true}, {1011, true}, {1000, false}, {1008, false}, {4000, false}} {
		r := newRedialer(t)
		s := start(t, Config{Reconnect: true, Redial: r.redial})
		s.backend.WriteFrame(frame.OpClose, wstest.ClosePayload(tc.code, "backend says"))
		if tc.redial {
			select {
			case <-r.calls:
			case <-time.After(5 * time.Second):
				t.Fatalf("%d: no re-dial", tc.code)
			}
			r.allow <- nil
			b2 := <-r.backend
			send(t, s.client, "after")
			expectMessage(t, b2, "after")
			continue
		}
		expectClose(t, s.client, frame.StatusCode(tc.code), "backend says")
		select {
		case <-r.calls:
			t.Fatalf("%d: re-dialled", tc.code)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Re-dials that keep failing end the client with 1011 and the last error,
// after the configured attempts.
func TestReconnectGivesUp(t *testing.T) {
	r := newRedialer(t)
	s := start(t, Config{Reconnect: true, Redial: r.redial, ReconnectAttempts: 2})
	s.backend.Close()
	r.allow <- errors.New("dial: connection refused")
	r.allow <- errors.New("dial: connection refused again")
	expectClose(t, s.client, 1011, "backend unavailable: dial: connection refused again")
	for i := range 2 {
		if err := <-s.tries; err == nil {
			t.Fatalf("attempt %d reported success", i+1)
		}
	}
	if len(r.calls) != 2 {
		t.Fatalf("%d re-dials, want 2", len(r.calls))
	}
	s.client.WriteFrame(frame.OpClose, wstest.ClosePayload(1011, ""))
	sum := summary(t, s)
	if sum.Closer != "gateway" || sum.Code != 1011 || sum.Reconnects != 0 {
		t.Fatalf("summary: %+v", sum)
	}
}

// The window bounds a gap however many attempts are left.
func TestReconnectWindow(t *testing.T) {
	r := newRedialer(t)
	s := start(t, Config{Reconnect: true, Redial: r.redial, ReconnectWindow: 300 * time.Millisecond})
	began := time.Now()
	s.backend.Close()
	expectClose(t, s.client, 1011, "backend unavailable: context deadline exceeded")
	if d := time.Since(began); d < 300*time.Millisecond {
		t.Fatalf("gave up after %v, before the window", d)
	}
}

// Past ReconnectBuffer, the client is closed with 1011 and a connection
// that the re-dial makes afterwards is closed, not used.
func TestReconnectBufferFull(t *testing.T) {
	r := newRedialer(t)
	s := start(t, Config{Reconnect: true, Redial: r.redial, ReconnectBuffer: 10})
	s.backend.Close()
	<-r.calls
	send(t, s.client, "12345678", "12345678")
	expectClose(t, s.client, 1011, "backend unavailable and reconnect buffer full")
	r.allow <- nil
	b2 := <-r.backend
	if _, err := b2.ReadFrame(5 * time.Second); err == nil {
		t.Fatal("the late backend got a frame")
	}
	s.client.WriteFrame(frame.OpClose, wstest.ClosePayload(1011, ""))
	sum := summary(t, s)
	if sum.Code != 1011 || sum.Reason != "reconnect buffer full" || sum.Reconnects != 0 {
		t.Fatalf("summary: %+v", sum)
	}
}

// A client that leaves during a gap ends the connection once: the re-dial
// stops and OnClose is called with the client's Close.
func TestReconnectClientLeavesInGap(t *testing.T) {
	r := newRedialer(t)
	s := start(t, Config{Reconnect: true, Redial: r.redial})
	s.backend.Close()
	<-r.calls
	s.client.WriteFrame(frame.OpClose, wstest.ClosePayload(1000, "leaving"))
	expectClose(t, s.client, 1000, "") // the gateway echoes the code
	s.client.Close()
	// The echo is written before the Conn records the client's end; a
	// backend that the re-dial brings in between is a live one, sent the
	// client's Close like any other. The one this test is about comes after.
	for deadline := time.Now().Add(5 * time.Second); !s.conn.isDone(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the Conn did not record the client's Close")
		}
	}
	r.allow <- nil
	b2 := <-r.backend
	if _, err := b2.ReadFrame(5 * time.Second); err == nil {
		t.Fatal("the backend dialled after the client left got a frame")
	}
	sum := summary(t, s)
	if sum.Closer != "client" || sum.Code != 1000 || sum.Reason != "leaving" {
		t.Fatalf("summary: %+v", sum)
	}
	select {
	case sum := <-s.closed:
		t.Fatalf("OnClose called twice: %+v", sum)
	case <-time.After(200 * time.Millisecond):
	}
}
