package terminate

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/caddy-websocket/caddy-websocket/internal/frame"
)

// A push answered before the backend spoke reaches the client first, even
// when the backend's message is relayed before the goroutine Push started
// gets to run; pushes keep their order among themselves.
func TestPushOrderedBeforeLaterMessages(t *testing.T) {
	for i := 0; i < 50; i++ {
		s := start(t, Config{})
		if err := s.conn.Push(frame.OpText, []byte("push 1")); err != nil {
			t.Fatal(err)
		}
		if err := s.conn.Push(frame.OpBinary, []byte("push 2")); err != nil {
			t.Fatal(err)
		}
		if err := s.backend.WriteFrame(frame.OpText, []byte("from the backend")); err != nil {
			t.Fatal(err)
		}
		expectMessage(t, s.client, "push 1")
		f, err := s.client.ReadFrame(5 * time.Second)
		if err != nil || f.Op != frame.OpBinary || string(f.Payload) != "push 2" {
			t.Fatalf("second push: %v %q %v", f.Op, f.Payload, err)
		}
		expectMessage(t, s.client, "from the backend")
	}
}

// A push accepted before the gateway closes the client goes before the
// Close frame; a push after it is refused.
func TestPushBeforeClose(t *testing.T) {
	s := start(t, Config{})
	if err := s.conn.Push(frame.OpText, []byte("last words")); err != nil {
		t.Fatal(err)
	}
	s.conn.Close(frame.CloseGoingAway, "bye")
	expectMessage(t, s.client, "last words")
	f, err := s.client.ReadFrame(5 * time.Second)
	if err != nil || f.Op != frame.OpClose {
		t.Fatalf("want the Close after the push, got %v %q %v", f.Op, f.Payload, err)
	}
	if err := s.conn.Push(frame.OpText, []byte("too late")); !errors.Is(err, ErrClosing) {
		t.Fatalf("push after Close: %v, want ErrClosing", err)
	}
}

// A client that does not read while pushes pile up past PushBuffer is a
// slow consumer: the push that overflows is refused and the client closed
// with 1011; the queue it held is dropped, not kept.
func TestPushSlowConsumer(t *testing.T) {
	s := start(t, Config{})
	big := []byte(strings.Repeat("x", 256<<10))
	var err error
	for i := 0; i < 64 && err == nil; i++ {
		err = s.conn.Push(frame.OpText, big)
	}
	if !errors.Is(err, ErrSlowConsumer) {
		t.Fatalf("pushing 16 MiB at a client that does not read: %v, want ErrSlowConsumer", err)
	}
	if err := s.conn.Push(frame.OpText, []byte("x")); !errors.Is(err, ErrClosing) {
		t.Fatalf("push after overflow: %v, want ErrClosing", err)
	}
	// The client now reads: what was written before the overflow, then 1011.
	for {
		f, err := s.client.ReadFrame(10 * time.Second)
		if err != nil {
			t.Fatalf("reading to the Close: %v", err)
		}
		if f.Op == frame.OpClose {
			if code := frame.StatusCode(uint16(f.Payload[0])<<8 | uint16(f.Payload[1])); code != frame.CloseInternalError {
				t.Fatalf("close code %d, want 1011", code)
			}
			return
		}
	}
}
