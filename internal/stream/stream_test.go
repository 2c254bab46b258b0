package stream

import (
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/caddy-websocket/caddy-websocket/internal/relay/quiet"
	"github.com/caddy-websocket/caddy-websocket/internal/tcptest"
)

// The stream's two directions stand on a real loopback socket here: its
// read side as the request body, its write side as the response writer,
// with the socket's write deadline as the stream's. A peer that does not
// read makes writes block, as HTTP/2 or QUIC flow control would.
func newOnSocket(t *testing.T) (*Conn, io.ReadWriter) {
	near, far := tcptest.Pair(t)
	c := New(near, near, func() error { return nil }, near.SetWriteDeadline, near.SetWriteDeadline, near.SetReadDeadline, near.LocalAddr(), near.RemoteAddr())
	pumped := make(chan struct{})
	go func() { c.Pump(); close(pumped) }()
	t.Cleanup(func() {
		c.Close()
		select {
		case <-pumped:
		case <-time.After(5 * time.Second):
			t.Error("Close did not end the pump")
		}
	})
	return c, far
}

func TestReadDeadlineFiresAgain(t *testing.T) {
	c, peer := newOnSocket(t)
	buf := make([]byte, 64)
	for i := range 2 {
		c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		if _, err := c.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("read %d: %v, want a deadline error", i, err)
		}
	}
	c.SetReadDeadline(time.Time{})
	io.WriteString(peer, "after two deadlines")
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != "after two deadlines" {
		t.Fatalf("%q %v", buf[:n], err)
	}
	// A burst bigger than the idle buffer arrives whole, in order.
	big := make([]byte, 200<<10)
	for i := range big {
		big[i] = byte(i)
	}
	go peer.Write(big)
	got := make([]byte, len(big))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	for i := range got {
		if got[i] != byte(i) {
			t.Fatalf("byte %d: %d", i, got[i])
		}
	}
}

// A write the peer does not take fails with a deadline error once the
// write deadline passes; an idle stream keeps no deadline (a write after a
// long pause succeeds).
func TestWriteDeadline(t *testing.T) {
	c, peer := newOnSocket(t)
	c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := c.Write([]byte("fits")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // idle past the deadline the relay left set
	c.SetWriteDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := c.Write([]byte("still fine")); err != nil {
		t.Fatalf("write after an idle pause: %v", err)
	}
	buf := make([]byte, 14)
	io.ReadFull(peer, buf)
	start := time.Now()
	var err error
	for err == nil && time.Since(start) < 5*time.Second {
		_, err = c.Write(make([]byte, 1<<20)) // the peer reads no more
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("blocked write: %v, want a deadline error", err)
	}
}

// Close cuts a blocked write short and waits for it, then Done closes:
// the handler may return with no write in flight.
func TestCloseEndsABlockedWrite(t *testing.T) {
	c, _ := newOnSocket(t)
	errc := make(chan error, 1)
	go func() {
		var err error
		for err == nil {
			_, err = c.Write(make([]byte, 1<<20))
		}
		errc <- err
	}()
	time.Sleep(200 * time.Millisecond) // the socket's buffers fill up
	select {
	case <-c.Done():
		t.Fatal("Done before Close")
	default:
	}
	c.Close()
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not end the blocked write")
	}
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("the write did not fail")
		}
	case <-time.After(time.Second):
		t.Fatal("the write still blocks after Done")
	}
	if _, err := c.Write([]byte("x")); err == nil {
		t.Fatal("write after Close")
	}
}

// A parked reader is woken by the hand-over, once, and finds the bytes
// without waiting; the pump reads on only once they are consumed; the end
// of the body wakes it too and reads as io.EOF.
func TestArmAndNext(t *testing.T) {
	c, peer := newOnSocket(t)
	if _, err := c.Next(false); err != quiet.ErrWouldBlock {
		t.Fatalf("Next on nothing: %v", err)
	}
	woken := make(chan struct{}, 4)
	c.Arm(func() { woken <- struct{}{} })
	select {
	case <-woken:
		t.Fatal("woken with nothing there")
	case <-time.After(50 * time.Millisecond):
	}
	io.WriteString(peer, "one")
	select {
	case <-woken:
	case <-time.After(5 * time.Second):
		t.Fatal("the hand-over did not wake the parked reader")
	}
	b, err := c.Next(false)
	if err != nil || string(b) != "one" {
		t.Fatalf("%q %v", b, err)
	}
	io.WriteString(peer, "two")
	time.Sleep(50 * time.Millisecond)
	// Not consumed yet: still the same bytes, the pump waits.
	c.rmu.Lock()
	held := string(c.data)
	c.rmu.Unlock()
	if held != "one" {
		t.Fatalf("the pump went on before the bytes were consumed: %q", held)
	}
	// Armed with bytes there: ready at once.
	c.Consumed()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c.rmu.Lock()
		got := len(c.data) > 0
		c.rmu.Unlock()
		if got || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	c.Arm(func() { woken <- struct{}{} })
	select {
	case <-woken:
	default:
		t.Fatal("Arm with bytes there did not call ready at once")
	}
	if b, err := c.Next(false); err != nil || string(b) != "two" {
		t.Fatalf("%q %v", b, err)
	}
	c.Arm(func() { woken <- struct{}{} })
	peer.(interface{ CloseWrite() error }).CloseWrite()
	select {
	case <-woken:
	case <-time.After(5 * time.Second):
		t.Fatal("the end of the body did not wake the parked reader")
	}
	if _, err := c.Next(true); err != io.EOF {
		t.Fatalf("after the end: %v, want io.EOF", err)
	}
}

// Close ends a Next waiting without a deadline.
func TestCloseEndsAWaitingRead(t *testing.T) {
	c, _ := newOnSocket(t)
	errc := make(chan error, 1)
	go func() { _, err := c.Next(true); errc <- err }()
	time.Sleep(50 * time.Millisecond)
	c.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("%v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not end the read")
	}
}
