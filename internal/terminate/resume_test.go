package terminate

import (
	"net"
	"sync"
	"testing"
	"time"

	"github.com/caddy-websocket/caddy-websocket/internal/frame"
	"github.com/caddy-websocket/caddy-websocket/internal/tcptest"
	"github.com/caddy-websocket/caddy-websocket/internal/timeout"
	"github.com/caddy-websocket/caddy-websocket/internal/wstest"
)

// The resume state machine over real loopback sockets: the test plays
// the client (masked frames) and the backend, the Conn is the gateway.

type resumeEvents struct {
	mu                          sync.Mutex
	detached, expired           []string
	detachedCh, resumedCh, expC chan struct{}
}

func startResumable(t *testing.T, cfg Config) (*setup, *resumeEvents) {
	ev := &resumeEvents{detachedCh: make(chan struct{}, 4), resumedCh: make(chan struct{}, 4), expC: make(chan struct{}, 4)}
	cfg.Resume = true
	cfg.OnDetach = func(why string) {
		ev.mu.Lock()
		ev.detached = append(ev.detached, why)
		ev.mu.Unlock()
		ev.detachedCh <- struct{}{}
	}
	cfg.OnResume = func(n int) { ev.resumedCh <- struct{}{} }
	cfg.OnExpire = func(why string) {
		ev.mu.Lock()
		ev.expired = append(ev.expired, why)
		ev.mu.Unlock()
		ev.expC <- struct{}{}
	}
	return start(t, cfg), ev
}

func waitFor(t *testing.T, ch chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatalf("no %s", what)
	}
}

// reset ends the client's connection with a TCP reset, as a network change
// does.
func reset(t *testing.T, p *wstest.Peer) {
	t.Helper()
	p.Conn.(*net.TCPConn).SetLinger(0)
	p.Conn.Close()
}

// A client whose connection is reset is detached, not gone: the backend
// keeps talking (and hears nothing), and a new connection attached to the
// session gets what was said meanwhile, once each and in order, then the
// conversation goes on both ways.
func TestResumeAfterReset(t *testing.T) {
	s, ev := startResumable(t, Config{})
	send(t, s.backend, "one", "two")
	expectMessage(t, s.client, "one")
	expectMessage(t, s.client, "two")
	reset(t, s.client)
	waitFor(t, ev.detachedCh, "detach")
	if ok, until := s.conn.Detached(); !ok || time.Until(until) < 25*time.Second {
		t.Fatalf("Detached: %v until %v", ok, until)
	}
	send(t, s.backend, "three", "four", "five")
	time.Sleep(100 * time.Millisecond) // the three are held

	g, p := tcptest.Pair(t)
	client := peerOf(p, true)
	if err := s.conn.Attach(g, nil, false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ev.resumedCh, "resume")
	for _, m := range []string{"three", "four", "five"} {
		expectMessage(t, client, m)
	}
	send(t, s.backend, "six")
	expectMessage(t, client, "six")
	send(t, client, "back")
	expectMessage(t, s.backend, "back")
	// The backend saw no Close in all this.
	s.backend.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if f, err := s.backend.ReadFrame(200 * time.Millisecond); err == nil {
		t.Fatalf("the backend got %v %q", f.Op, f.Payload)
	}
	if st := s.conn.Stats(); st.Legs.Client.Messages != 1 || st.Legs.Backend.Messages != 6 {
		t.Fatalf("counts: client %d, backend %d messages", st.Legs.Client.Messages, st.Legs.Backend.Messages)
	}
}

// A client that does not come back within the window: the backend gets
// what it would have got at the drop, 1001 "client went away", later.
func TestResumeWindowExpires(t *testing.T) {
	s, ev := startResumable(t, Config{ResumeWindow: 300 * time.Millisecond})
	send(t, s.backend, "one")
	expectMessage(t, s.client, "one")
	reset(t, s.client)
	waitFor(t, ev.detachedCh, "detach")
	start := time.Now()
	expectClose(t, s.backend, frame.CloseGoingAway, "client went away")
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Fatalf("the backend was told after %v, before the window", d)
	}
	waitFor(t, ev.expC, "expiry")
	s.backend.WriteFrame(frame.OpClose, wstest.ClosePayload(1001, ""))
	s.backend.Conn.Close() // the server's TCP close ends the closing handshake
	if sum := summary(t, s); sum.Closer != "client" || sum.Code != frame.CloseAbnormal {
		t.Fatalf("summary %+v", sum)
	}
	g, _ := tcptest.Pair(t)
	if err := s.conn.Attach(g, nil, false); err != ErrNotDetached {
		t.Fatalf("Attach after the window: %v", err)
	}
}

// More than resume_buffer for a client that is away ends the session as
// the drop would have.
func TestResumeBufferOverflow(t *testing.T) {
	s, ev := startResumable(t, Config{ResumeBuffer: 10})
	reset(t, s.client)
	waitFor(t, ev.detachedCh, "detach")
	send(t, s.backend, "12345", "67890", "x")
	expectClose(t, s.backend, frame.CloseGoingAway, "client went away")
	waitFor(t, ev.expC, "end")
	ev.mu.Lock()
	defer ev.mu.Unlock()
	if len(ev.expired) != 1 || ev.expired[0] != "resume buffer full" {
		t.Fatalf("expired: %q", ev.expired)
	}
}

// A client's clean Close ends the session at once, resume or not.
func TestResumeCleanCloseEnds(t *testing.T) {
	s, _ := startResumable(t, Config{})
	s.client.WriteFrame(frame.OpClose, wstest.ClosePayload(1000, "bye"))
	expectClose(t, s.backend, frame.CloseNormal, "bye")
	if ok, _ := s.conn.Detached(); ok {
		t.Fatal("detached after a clean Close")
	}
}

// Without TCP under the client leg (a pipe here; an HTTP/2 or HTTP/3
// stream in production), only the gateway's Pings tell what the client
// read: the messages before an answered Ping are not sent again, those
// after it are.
func TestResumeAcknowledgedByPong(t *testing.T) {
	bg, bp := tcptest.Pair(t)
	cg, cp := net.Pipe()
	client, backend := peerOf(cp, true), peerOf(bp, false)
	detached := make(chan struct{}, 1)
	c := New(cg, bg, Config{Resume: true, Client: timeout.Policy{Keepalive: 200 * time.Millisecond},
		OnDetach: func(string) { detached <- struct{}{} }})
	c.Start(nil, nil)
	send(t, backend, "read")
	expectMessage(t, client, "read")
	f, err := client.ReadFrame(5 * time.Second)
	if err != nil || f.Op != frame.OpPing {
		t.Fatalf("want the gateway's Ping: %v %v", f.Op, err)
	}
	client.WriteFrame(frame.OpPong, f.Payload)
	time.Sleep(50 * time.Millisecond)
	send(t, backend, "unconfirmed")
	expectMessage(t, client, "unconfirmed")
	cp.Close()
	waitFor(t, detached, "detach")

	g, p := tcptest.Pair(t)
	again := peerOf(p, true)
	if err := c.Attach(g, nil, false); err != nil {
		t.Fatal(err)
	}
	expectMessage(t, again, "unconfirmed")
	send(t, backend, "live")
	expectMessage(t, again, "live")
}

// Pushes (the push API) to a detached session wait for the client like the
// backend's messages, and come after them, in order.
func TestResumePushesWait(t *testing.T) {
	s, ev := startResumable(t, Config{})
	reset(t, s.client)
	waitFor(t, ev.detachedCh, "detach")
	send(t, s.backend, "from the backend")
	time.Sleep(50 * time.Millisecond)
	if err := s.conn.Push(frame.OpText, []byte("pushed")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	g, p := tcptest.Pair(t)
	client := peerOf(p, true)
	if err := s.conn.Attach(g, nil, false); err != nil {
		t.Fatal(err)
	}
	expectMessage(t, client, "from the backend")
	expectMessage(t, client, "pushed")
	if err := s.conn.Push(frame.OpText, []byte("pushed again")); err != nil {
		t.Fatal(err)
	}
	expectMessage(t, client, "pushed again")
}
