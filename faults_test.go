package websocket_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/caddy-websocket/caddy-websocket/internal/frame"
	"github.com/caddy-websocket/caddy-websocket/internal/wstest"
)

// TestBackendClosesMidFrame: the backend sends half a frame and hangs up.
// The tunnel relays the half it got and closes; terminate mode never
// relays a partial message and tells the client 1011.
func TestBackendClosesMidFrame(t *testing.T) {
	wstest.NoLeaks(t)
	half := wstest.EncodeFrame(false, true, 0, frame.OpText, []byte("a message that never ends"))[:12]
	backend := wstest.NewBackend(t, nil, func(p *wstest.Peer) {
		p.Write(half)
		time.Sleep(100 * time.Millisecond)
	})
	addrs := wstest.StartCaddyPorts(t, fmt.Sprintf(`http://127.0.0.1:{PORT1} {
		websocket %[1]s
	}
	http://127.0.0.1:{PORT2} {
		websocket %[1]s {
			mode terminate
		}
	}`, backend.Addr), 2)

	p, _ := wstest.Dial(t, addrs[0], "")
	b, err := p.ReadBytes(len(half), 5*time.Second)
	if err != nil || string(b) != string(half) {
		t.Fatalf("tunnel: %q %v", b, err)
	}
	if _, err := p.ReadBytes(1, 5*time.Second); err == nil {
		t.Fatal("tunnel: more bytes after the backend hung up mid-frame")
	}

	p, _ = wstest.Dial(t, addrs[1], "")
	f, err := p.ReadFrame(5 * time.Second)
	code, _, _ := frame.ParseClose(f.Payload)
	if err != nil || f.Op != frame.OpClose || code != 1011 {
		t.Fatalf("terminate: %v %d %v", f.Op, code, err)
	}
}

// TestBackendSendsInvalidFrames: in terminate mode the client gets 1014
// (bad gateway) with the reason, never the garbage.
func TestBackendSendsInvalidFrames(t *testing.T) {
	wstest.NoLeaks(t)
	cases := map[string][]byte{
		"masked frame from a server": wstest.EncodeFrame(true, true, 0, frame.OpText, []byte("hi")),
		"reserved opcode":            wstest.EncodeFrame(false, true, 0, 0x3, []byte("hi")),
		"invalid UTF-8":              wstest.EncodeFrame(false, true, 0, frame.OpText, []byte{0xff, 0xfe}),
		"RSV1 without deflate":       wstest.EncodeFrame(false, true, frame.Rsv1, frame.OpText, []byte("hi")),
	}
	for name, bad := range cases {
		t.Run(name, func(t *testing.T) {
			backend := wstest.NewBackend(t, nil, func(p *wstest.Peer) {
				p.Write(bad)
				p.ReadFrame(5 * time.Second) // the gateway's Close
			})
			addr := wstest.StartCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
				websocket %s {
					mode terminate
				}
			}`, backend.Addr))
			p, _ := wstest.Dial(t, addr, "")
			f, err := p.ReadFrame(5 * time.Second)
			code, reason, _ := frame.ParseClose(f.Payload)
			if err != nil || f.Op != frame.OpClose || code != 1014 {
				t.Fatalf("client got %v %d %q %v", f.Op, code, reason, err)
			}
			t.Logf("client got Close 1014 %q", reason)
		})
	}
}

// TestSlowBackend: a backend that stops reading is dropped after its
// write_timeout, and the client gets 1011 instead of waiting forever.
func TestSlowBackend(t *testing.T) {
	wstest.NoLeaks(t)
	backend := wstest.NewBackend(t, nil, func(p *wstest.Peer) { time.Sleep(3 * time.Second) }) // never reads
	addr := wstest.StartCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
		websocket %s {
			backend {
				write_timeout 1s
			}
		}
	}`, backend.Addr))
	p, _ := wstest.Dial(t, addr, "")
	big := wstest.EncodeFrame(true, true, 0, frame.OpBinary, make([]byte, 1<<20))
	go func() {
		for i := 0; i < 64; i++ {
			if _, err := p.Write(big); err != nil {
				return
			}
		}
	}()
	f, err := p.ReadFrame(10 * time.Second)
	code, reason, _ := frame.ParseClose(f.Payload)
	if err != nil || f.Op != frame.OpClose || code != 1011 || reason != "backend stopped reading" {
		t.Fatalf("client got %v %d %q %v", f.Op, code, reason, err)
	}
}

// TestClientVanishesSilently: a client that is gone without a FIN (a
// dropped network) stops answering pings; the backend gets Close 1001
// within pong_timeout + 1 s of the first unanswered ping.
func TestClientVanishesSilently(t *testing.T) {
	wstest.NoLeaks(t)
	got := make(chan wstest.Frame, 1)
	backend := wstest.NewBackend(t, nil, func(p *wstest.Peer) {
		for {
			f, err := p.ReadFrame(10 * time.Second)
			if err != nil {
				return
			}
			if f.Op == frame.OpClose {
				got <- f
				return
			}
		}
	})
	addr := wstest.StartCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
		websocket %s {
			client {
				keepalive 300ms
				pong_timeout 500ms
			}
		}
	}`, backend.Addr))
	p, _ := wstest.Dial(t, addr, "")
	// Read the ping, answer nothing, send nothing, keep the socket open.
	f, err := p.ReadFrame(2 * time.Second)
	if err != nil || f.Op != frame.OpPing {
		t.Fatalf("%v %v", f.Op, err)
	}
	pinged := time.Now()
	select {
	case f := <-got:
		code, reason, _ := frame.ParseClose(f.Payload)
		if code != 1001 || reason != "client did not answer ping" {
			t.Fatalf("backend got Close %d %q", code, reason)
		}
		if el := time.Since(pinged); el > 1500*time.Millisecond {
			t.Fatalf("backend told after %v, want within pong_timeout + 1s", el)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the backend was not told")
	}
}
