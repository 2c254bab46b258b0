package websocket_test

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/caddy-websocket/caddy-websocket/internal/wstest"
)

// TestConnectionLimits: per-address and total limits answer 503 with
// Retry-After before any backend is dialled, and free up when connections
// end.
func TestConnectionLimits(t *testing.T) {
	backend := wstest.NewBackend(t, nil, wstest.Drain(20*time.Second))
	addr := wstest.StartCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
		websocket %s {
			max_connections 3
			max_connections_per_ip 2
		}
	}`, backend.Addr))
	dial := func(from string) (*wstest.Peer, int, string) {
		p, res := wstest.DialFrom(t, from, addr, "")
		body, _ := io.ReadAll(res.Body)
		if p == nil && res.Header.Get("Retry-After") == "" {
			t.Errorf("%d without Retry-After", res.StatusCode)
		}
		return p, res.StatusCode, string(body)
	}
	a1, st, _ := dial("127.0.0.1")
	_, st2, _ := dial("127.0.0.1")
	if st != 101 || st2 != 101 {
		t.Fatalf("first two from 127.0.0.1: %d %d", st, st2)
	}
	accepted := backend.Accepted.Load()
	if _, st, body := dial("127.0.0.1"); st != 503 || !strings.Contains(body, "from 127.0.0.1 (limit 2)") {
		t.Fatalf("third from 127.0.0.1: %d %q", st, body)
	}
	if _, st, _ := dial("127.0.0.2"); st != 101 {
		t.Fatalf("first from 127.0.0.2: %d", st)
	}
	if _, st, body := dial("127.0.0.3"); st != 503 || !strings.Contains(body, "(limit 3)") {
		t.Fatalf("fourth in all: %d %q", st, body)
	}
	if n := backend.Accepted.Load() - accepted; n != 1 {
		t.Fatalf("%d backend dials for one accepted and two refused upgrades", n)
	}
	// A connection that ends frees its place.
	a1.Close()
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		p, res := wstest.DialFrom(t, "127.0.0.3", addr, "")
		if p != nil {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("still refused after a connection ended: %d", res.StatusCode)
		}
	}
}

// TestMessageRateLimit: a terminated client that sends faster than
// max_message_rate gets Close 1008.
func TestMessageRateLimit(t *testing.T) {
	echo := echoBackend(t)
	addr := wstest.StartCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
		websocket %s {
			mode terminate
			max_message_rate 10
		}
	}`, hostOf(echo)))
	c := dialWS(t, "ws://"+addr+"/")
	// Within the rate: every message comes back.
	for i := 0; i < 15; i++ {
		c.WriteMessage(websocket.TextMessage, []byte("ok"))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, _, err := c.ReadMessage(); err != nil {
			t.Fatalf("message %d at 8/s: %v", i, err)
		}
		time.Sleep(125 * time.Millisecond)
	}
	// A burst of 30: the bucket (10) runs dry and the client is closed.
	for i := 0; i < 30; i++ {
		c.WriteMessage(websocket.TextMessage, []byte("spam"))
	}
	for {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, _, err := c.ReadMessage()
		if err == nil {
			continue // echoes of the burst sent before the limit hit
		}
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != 1008 || ce.Text != "message rate exceeded" {
			t.Fatalf("after the burst: %v", err)
		}
		break
	}
}

// TestHugeFrameHeader: a client announces a 2 GiB frame. The tunnel
// streams what arrives without buffering it; terminate mode refuses it
// with 1009 from the header alone.
func TestHugeFrameHeader(t *testing.T) {
	wstest.NoLeaks(t)
	got := make(chan []byte, 1)
	backend := wstest.NewBackend(t, nil, func(p *wstest.Peer) {
		b, _ := p.ReadBytes(14+1<<20, 10*time.Second)
		got <- b
	})
	addrs := wstest.StartCaddyPorts(t, fmt.Sprintf(`http://127.0.0.1:{PORT1} {
		websocket %[1]s
	}
	http://127.0.0.1:{PORT2} {
		websocket %[1]s {
			mode terminate
		}
	}`, backend.Addr), 2)
	// Header: binary, FIN, masked, 64-bit length 2 GiB, mask key.
	hdr := []byte{0x82, 0xff, 0, 0, 0, 0, 0x80, 0, 0, 0, 1, 2, 3, 4}
	chunk := make([]byte, 1<<20)

	p, _ := wstest.Dial(t, addrs[0], "")
	p.Write(hdr)
	p.Write(chunk)
	select {
	case b := <-got:
		if len(b) != 14+1<<20 || string(b[:14]) != string(hdr) {
			t.Fatalf("tunnel: backend got %d bytes", len(b))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("tunnel: the first MiB of a 2 GiB frame did not stream through")
	}

	p, _ = wstest.Dial(t, addrs[1], "")
	p.Write(hdr)
	f, err := p.ReadFrame(5 * time.Second)
	if err != nil || f.Op != 0x8 || len(f.Payload) < 2 || int(f.Payload[0])<<8|int(f.Payload[1]) != 1009 {
		t.Fatalf("terminate: %v %q %v", f.Op, f.Payload, err)
	}
}
