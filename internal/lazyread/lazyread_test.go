package lazyread

import (
	"io"
	"net"
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
