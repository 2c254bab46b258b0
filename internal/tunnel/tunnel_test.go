package tunnel

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"github.com/caddy-websocket/caddy-websocket/internal/frame"
	"github.com/caddy-websocket/caddy-websocket/internal/relay"
	"github.com/caddy-websocket/caddy-websocket/internal/relay/liveness"
	"github.com/caddy-websocket/caddy-websocket/internal/timeout"
)

func enc(masked, fin bool, op frame.Opcode, payload []byte) []byte {
	h := frame.Header{Fin: fin, Op: op, Masked: masked, Length: int64(len(payload)), Mask: [4]byte{7, 1, 9, 3}}
	b := make([]byte, h.Size(), h.Size()+len(payload))
	frame.PutHeader(b, h)
	b = append(b, payload...)
	if masked {
		frame.Mask(h.Mask, 0, b[h.Size():])
	}
	return b
}

// ownPong is the payload of the gateway's first ping on a leg.
func ownPong() []byte {
	var w liveness.Watch
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	w.Init(a, timeout.Policy{}, time.Now(), time.Now, nil)
	p := w.NextPing()
	return p[:]
}

// pipes returns a tunnel over in-memory pipes, which take the generic read
// path, and the far ends: what the client and the backend hold.
func pipes(t *testing.T, cfg Config) (client, backend net.Conn, c *Conn) {
	cNear, cFar := net.Pipe()
	bNear, bFar := net.Pipe()
	c = New(cNear, bNear, cfg)
	c.Start(nil, nil)
	t.Cleanup(func() { cFar.Close(); bFar.Close() })
	return cFar, bFar, c
}

// TestSplitAnywhere relays one stream cut into two writes at every possible
// point: headers, held Pongs and payloads split across reads must come out
// byte for byte, less the Pong that answers the gateway's ping.
func TestSplitAnywhere(t *testing.T) {
	var in, want []byte
	add := func(b []byte, keep bool) {
		in = append(in, b...)
		if keep {
			want = append(want, b...)
		}
	}
	add(enc(true, false, frame.OpText, bytes.Repeat([]byte("a"), 130)), true)
	add(enc(true, true, frame.OpPing, []byte("ping")), true)
	add(enc(true, true, frame.OpPong, ownPong()), false)
	add(enc(true, true, frame.OpContinuation, []byte("b")), true)
	add(enc(true, true, frame.OpPong, []byte("not ours")), true)
	add(enc(true, true, frame.OpBinary, nil), true)
	add(enc(true, true, frame.OpBinary, bytes.Repeat([]byte{0xfe}, 300)), true)

	for k := 0; k <= len(in); k++ {
		client, backend, _ := pipes(t, Config{})
		go func() {
			client.Write(in[:k])
			client.Write(in[k:])
		}()
		backend.SetReadDeadline(time.Now().Add(5 * time.Second))
		got := make([]byte, len(want))
		if _, err := io.ReadFull(backend, got); err != nil {
			t.Fatalf("split at %d: %v", k, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("split at %d: relayed bytes differ", k)
		}
		client.Close()
		backend.Close()
	}
}

// TestPingWaitsForFrameBoundary: a keepalive ping that falls due while a
// frame is half relayed goes out after that frame, never inside it.
func TestPingWaitsForFrameBoundary(t *testing.T) {
	client, backend, _ := pipes(t, Config{Backend: timeout.Policy{Keepalive: 100 * time.Millisecond}})
	payload := bytes.Repeat([]byte("x"), 1000)
	f := enc(true, true, frame.OpBinary, payload)
	got := make(chan []byte)
	go func() {
		b := make([]byte, 64<<10)
		var all []byte
		backend.SetReadDeadline(time.Now().Add(3 * time.Second))
		for {
			n, err := backend.Read(b)
			all = append(all, b[:n]...)
			if err != nil || len(all) >= len(f)+2+4+8 {
				got <- all
				return
			}
		}
	}()
	client.Write(f[:500])
	time.Sleep(400 * time.Millisecond) // the ping falls due now, mid-frame
	client.Write(f[500:])
	all := <-got
	if !bytes.Equal(all[:len(f)], f) {
		t.Fatalf("the frame was interrupted: %x", all[:min(len(all), 600)])
	}
	h, n, err := frame.ParseHeader(all[len(f):])
	if err != nil || n == 0 || h.Op != frame.OpPing || !h.Masked || h.Length != 8 {
		t.Fatalf("after the frame: %+v %v", h, err)
	}
}

// TestOwnPongsAreConsumed: the backend answers the gateway's pings; the
// client never sees those Pongs, and keepalive continues.
func TestOwnPongsAreConsumed(t *testing.T) {
	client, backend, c := pipes(t, Config{Backend: timeout.Policy{Keepalive: 50 * time.Millisecond, PongTimeout: time.Second}})
	go func() {
		b := make([]byte, 64)
		for {
			backend.SetReadDeadline(time.Now().Add(2 * time.Second))
			n, err := io.ReadAtLeast(backend, b, 2)
			if err != nil {
				return
			}
			h, hs, _ := frame.ParseHeader(b[:n])
			if h.Op != frame.OpPing {
				return
			}
			p := append([]byte(nil), b[hs:hs+int(h.Length)]...)
			frame.Mask(h.Mask, 0, p)
			backend.Write(enc(false, true, frame.OpPong, p))
		}
	}()
	client.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	b := make([]byte, 100)
	if n, err := client.Read(b); err == nil {
		t.Fatalf("the client got %x", b[:n])
	}
	pings, pongs, _ := c.legs.Backend.Live.Pings()
	if pings < 5 {
		t.Fatalf("%d pings in 500ms at 50ms", pings)
	}
	if pongs < 4 {
		t.Fatalf("%d pongs taken as answers", pongs)
	}
}

// TestSummary: a clean close from the client, answered by the backend, is
// summarised once with the client as closer.
func TestSummary(t *testing.T) {
	done := make(chan relay.Summary, 2)
	client, backend, _ := pipes(t, Config{Hooks: relay.Hooks{CloseGrace: 200 * time.Millisecond, OnClose: func(s relay.Summary) { done <- s }}})
	go io.Copy(io.Discard, client)
	msg := enc(true, true, frame.OpText, []byte("hello"))
	closeF := enc(true, true, frame.OpClose, append([]byte{0x03, 0xe8}, "bye"...))
	go client.Write(append(msg, closeF...))
	b := make([]byte, len(msg)+len(closeF))
	backend.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.ReadFull(backend, b); err != nil {
		t.Fatal(err)
	}
	backend.Write(enc(false, true, frame.OpClose, []byte{0x03, 0xe8}))
	backend.Close()
	select {
	case s := <-done:
		if s.Closer != "client" || s.Code != 1000 || s.Reason != "bye" || s.Legs.Client.Messages != 1 || s.Legs.Client.Bytes != int64(len(b)) {
			t.Fatalf("%+v", s)
		}
	case <-time.After(7 * time.Second):
		t.Fatal("no summary")
	}
	select {
	case s := <-done:
		t.Fatalf("second summary %+v", s)
	case <-time.After(100 * time.Millisecond):
	}
}
