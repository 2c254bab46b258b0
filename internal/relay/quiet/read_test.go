package quiet

import (
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/caddy-websocket/caddy-websocket/internal/tcptest"
)

func TestWouldBlock(t *testing.T) {
	near, far := tcptest.Pair(t)
	var r Reader
	r.Init(near)
	if _, err := r.Read(false); err != ErrWouldBlock {
		t.Fatalf("nothing sent: %v", err)
	}
	far.Write([]byte("hello"))
	time.Sleep(50 * time.Millisecond)
	b, err := r.Read(false)
	if err != nil || string(b) != "hello" {
		t.Fatalf("%q %v", b, err)
	}
	// A short read drained the socket: no syscall needed to say so.
	if _, err := r.Read(false); err != ErrWouldBlock {
		t.Fatalf("after a short read: %v", err)
	}
	near.SetReadDeadline(time.Now().Add(5 * time.Second))
	go func() { time.Sleep(50 * time.Millisecond); far.Write([]byte("again")) }()
	if b, err := r.Read(true); err != nil || string(b) != "again" {
		t.Fatalf("waiting: %q %v", b, err)
	}
	r.Release()
}

// TestBytesThenFIN: a read stops short at a FIN, so the FIN is still to be
// read; a waiting Read must not sleep through it in the edge-triggered
// poller.
func TestBytesThenFIN(t *testing.T) {
	near, far := tcptest.Pair(t)
	var r Reader
	r.Init(near)
	far.Write([]byte("last words"))
	far.Close()
	time.Sleep(50 * time.Millisecond)
	near.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, err := r.Read(true); err != nil || string(b) != "last words" {
		t.Fatalf("%q %v", b, err)
	}
	start := time.Now()
	if _, err := r.Read(true); err != io.EOF {
		t.Fatalf("after the bytes: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("EOF took %v", d)
	}
}

func TestLargeRead(t *testing.T) {
	near, far := tcptest.Pair(t)
	var r Reader
	r.Init(near)
	msg := make([]byte, 3*BufSize)
	go far.Write(msg)
	near.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := 0
	for got < len(msg) {
		b, err := r.Read(true)
		if err != nil {
			t.Fatal(err)
		}
		got += len(b)
	}
	r.Release()
}

func TestPipeAlwaysWaits(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	var r Reader
	r.Init(a)
	go b.Write([]byte("x"))
	if got, err := r.Read(false); err != nil || string(got) != "x" {
		t.Fatalf("%q %v", got, err)
	}
}

// TestTLSWithoutWaiting: a TLS connection can be read without waiting,
// including records crypto/tls read off the socket with an earlier one and
// holds (the socket is empty then, and parking on it would sleep through
// them), and a read deadline set meanwhile is the one in force afterwards.
func TestTLSWithoutWaiting(t *testing.T) {
	near, far := tcptest.TLSPair(t)
	var r Reader
	r.Init(near)
	if r.tls == nil {
		t.Fatal("TLS over TCP not read lazily")
	}
	if _, err := r.Read(false); err != ErrWouldBlock {
		t.Fatalf("nothing sent: %v", err)
	}
	// Three records in one TCP segment, most likely read in one syscall.
	go func() {
		far.Write([]byte("one"))
		far.Write([]byte("two"))
		far.Write([]byte("three"))
	}()
	time.Sleep(100 * time.Millisecond)
	var got []string
	for len(got) < 3 {
		b, err := r.Read(false)
		if err == ErrWouldBlock {
			t.Fatalf("would block with %q read of one, two, three", got)
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, string(b))
	}
	if got[0] != "one" || got[1] != "two" || got[2] != "three" {
		t.Fatalf("%q", got)
	}
	if _, err := r.Read(false); err != ErrWouldBlock {
		t.Fatalf("all read: %v", err)
	}
	// The owner's deadline is kept across reads that do not wait.
	r.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	r.Read(false)
	start := time.Now()
	if _, err := r.Read(true); !os.IsTimeout(err) || time.Since(start) > time.Second {
		t.Fatalf("waiting read: %v after %v", err, time.Since(start))
	}
	// A deadline that has passed is reported as a socket read would: the
	// owner's timer (a keepalive ping) is due, not "nothing to read".
	r.SetReadDeadline(time.Now().Add(-time.Millisecond))
	if _, err := r.Read(false); !os.IsTimeout(err) {
		t.Fatalf("past deadline, not waiting: %v", err)
	}
	r.SetReadDeadline(time.Time{})
	far.Close()
	time.Sleep(50 * time.Millisecond)
	if _, err := r.Read(false); err == nil || err == ErrWouldBlock {
		t.Fatalf("after the peer closed: %v", err)
	}
	r.Release()
}

func TestEmpty(t *testing.T) {
	near, _ := tcptest.Pair(t)
	var r Reader
	r.Init(near)
	if err := r.Empty(); err != ErrWouldBlock {
		t.Fatalf("Empty = %v, want ErrWouldBlock", err)
	}
	r.SetReadDeadline(time.Now().Add(-time.Second))
	if err := r.Empty(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Empty past the deadline = %v", err)
	}
}

// A plain TCP socket's deadline is put on it only while a read waits: one
// set from another goroutine during the wait ends it, one set between
// reads is checked by a read that does not wait, and a deadline a wait
// left on the socket does not fire on a later read after it moved.
func TestDeadlineWhileWaiting(t *testing.T) {
	near, far := tcptest.Pair(t)
	var r Reader
	r.Init(near)
	go func() {
		time.Sleep(50 * time.Millisecond)
		r.SetReadDeadline(time.Now())
	}()
	start := time.Now()
	if _, err := r.Read(true); !os.IsTimeout(err) || time.Since(start) > 2*time.Second {
		t.Fatalf("a deadline set during the wait: %v after %v", err, time.Since(start))
	}
	r.SetReadDeadline(time.Now().Add(-time.Second))
	if _, err := r.Read(false); !os.IsTimeout(err) {
		t.Fatalf("a passed deadline, read without waiting: %v", err)
	}
	r.SetReadDeadline(time.Time{})
	far.Write([]byte("x"))
	time.Sleep(20 * time.Millisecond)
	if b, err := r.Read(false); err != nil || string(b) != "x" {
		t.Fatalf("after the deadline was lifted: %q %v", b, err)
	}
}
