package websocket_test

import (
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/caddy-websocket/caddy-websocket/internal/frame"
	"github.com/caddy-websocket/caddy-websocket/internal/wstest"
)

// TestStreamCloses: over HTTP/2 and HTTP/3, whoever closes — the client,
// the backend, an admin DELETE, the client's idle timeout, the lifetime —
// the client reads a Close frame with the closer's code and then the end
// of the stream (END_STREAM or FIN, not a reset), in both modes. The client
// behaves as Chromium does: its Close frame ends its side of the stream. A
// stream ended before the Close is read (the gateway closed it as soon as
// the client's side ended) is what browsers report as 1006.
func TestStreamCloses(t *testing.T) {
	t.Run("h2", func(t *testing.T) {
		if inChild(t, "GODEBUG=http2xconnect=1") {
			return
		}
		testStreamCloses(t, "h2")
	})
	t.Run("h3", func(t *testing.T) {
		if raceEnabled {
			t.Skip("caddytls races with QUIC handshakes under -race (Caddy's own); run without -race")
		}
		testStreamCloses(t, "h3")
	})
}

// closeOnRequest is an echo backend that sends Close 4001 when told
// "close please", then waits for the answer.
func closeOnRequest(t *testing.T) *wstest.Backend {
	return wstest.NewBackend(t, nil, func(p *wstest.Peer) {
		for {
			f, err := p.ReadFrame(30 * time.Second)
			if err != nil {
				return
			}
			switch {
			case f.Op == frame.OpClose:
				p.WriteFrame(frame.OpClose, f.Payload)
				return
			case string(f.Payload) == "close please":
				p.WriteFrame(frame.OpClose, wstest.ClosePayload(4001, "backend done"))
			case f.Op == frame.OpText || f.Op == frame.OpBinary:
				p.WriteFrame(f.Op, f.Payload)
			}
		}
	})
}

func testStreamCloses(t *testing.T, proto string) {
	backend := closeOnRequest(t)
	ca := wstest.NewCA(t)
	var routes string
	for _, mode := range []string{"tunnel", "terminate"} {
		routes += fmt.Sprintf(`
		websocket /%[1]s %[2]s {
			mode %[1]s
		}
		websocket /%[1]s-idle %[2]s {
			mode %[1]s
			client {
				keepalive off
				idle_timeout 1s
			}
		}
		websocket /%[1]s-lifetime %[2]s {
			mode %[1]s
			max_lifetime 1s
		}`, mode, backend.Addr)
	}
	addr, admin := wstest.StartCaddyGlobal(t, "\tskip_install_trust\n\tauto_https disable_redirects\n\tmetrics", `https://localhost:{PORT} {
		tls `+ca.CertFile+` `+ca.KeyFile+`
		log {
			output discard
		}
		`+routes+`
	}`, true)

	dial := func(t *testing.T, path string) (*wstest.Peer, func() error, func() error) {
		if proto == "h2" {
			p, s := dialH2(t, addr, path, true)
			return p, s.body.Close, func() error { return <-s.ended }
		}
		p, res, str := dialH3(t, addr, path, nil)
		if p == nil {
			t.Fatalf("extended CONNECT answered %d", res.StatusCode)
		}
		return p, str.Close, func() error {
			_, err := io.Copy(io.Discard, p.R)
			return err // nil at FIN
		}
	}
	closers := []struct {
		name, route string
		start       func(t *testing.T, p *wstest.Peer)
		code        frame.StatusCode
	}{
		{"client", "", func(t *testing.T, p *wstest.Peer) {}, 4000},
		{"backend", "", func(t *testing.T, p *wstest.Peer) { p.WriteFrame(frame.OpText, []byte("close please")) }, 4001},
		{"admin", "", func(t *testing.T, p *wstest.Peer) { deleteOnly(t, admin) }, 4002},
		{"idle", "-idle", func(t *testing.T, p *wstest.Peer) {}, frame.CloseGoingAway},
		{"lifetime", "-lifetime", func(t *testing.T, p *wstest.Peer) {}, frame.CloseGoingAway},
	}
	for _, mode := range []string{"tunnel", "terminate"} {
		for _, c := range closers {
			t.Run(mode+"/"+c.name, func(t *testing.T) {
				p, closeWrite, ended := dial(t, "/"+mode+c.route)
				p.WriteFrame(frame.OpText, []byte("hello"))
				if f, err := p.ReadFrame(5 * time.Second); err != nil || string(f.Payload) != "hello" {
					t.Fatalf("echo: %v %q", err, f.Payload)
				}
				if c.name == "client" {
					// As Chromium does: the Close frame, then the end of
					// the client's side of the stream.
					p.WriteFrame(frame.OpClose, wstest.ClosePayload(4000, "bye"))
					closeWrite()
				}
				c.start(t, p)
				var f wstest.Frame
				var err error
				for f.Op != frame.OpClose && err == nil {
					f, err = p.ReadFrame(5 * time.Second)
				}
				if err != nil {
					t.Fatalf("%s over %s, %s closing: no Close frame: %v", mode, proto, c.name, err)
				}
				code, reason, _ := frame.ParseClose(f.Payload)
				if code != c.code {
					t.Fatalf("%s over %s, %s closing: Close %d %q, want %d", mode, proto, c.name, code, reason, c.code)
				}
				if c.name != "client" {
					p.WriteFrame(frame.OpClose, f.Payload)
					closeWrite()
				}
				done := make(chan error, 1)
				go func() { done <- ended() }()
				select {
				case err := <-done:
					if err != nil {
						t.Fatalf("%s over %s, %s closing: the stream ended with %v after the Close, want its end (END_STREAM/FIN)", mode, proto, c.name, err)
					}
				case <-time.After(5 * time.Second):
					t.Fatalf("%s over %s, %s closing: the stream did not end after the Close", mode, proto, c.name)
				}
				t.Logf("%s over %s, %s closing: Close %d %q, then the stream's end", mode, proto, c.name, code, reason)
			})
		}
	}
}

// deleteOnly closes, through the admin API, the one connection the
// gateway holds, with code 4002.
func deleteOnly(t *testing.T, admin string) {
	t.Helper()
	var list connList
	adminJSON(t, "GET", "http://"+admin+"/websocket/connections", &list)
	if len(list.Connections) != 1 {
		t.Fatalf("admin list: %d connections, want 1", len(list.Connections))
	}
	if st := adminJSON(t, "DELETE", "http://"+admin+"/websocket/connections/"+list.Connections[0].ID+"?code=4002&reason=admin", nil); st != http.StatusOK {
		t.Fatalf("DELETE: %d", st)
	}
}
