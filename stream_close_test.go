package websocket_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/caddy-websocket/caddy-websocket/internal/frame"
	"github.com/caddy-websocket/caddy-websocket/internal/wstest"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// TestStreamCloses: over HTTP/2 and HTTP/3, whoever closes — the client,
// the backend, an admin DELETE, the client's idle timeout, the lifetime —
// the client reads a Close frame with the closer's code and then the end
// of the stream (END_STREAM or FIN, not a reset), in both modes. The client
// behaves as Chromium does: its Close frame ends its side of the stream. A
// stream ended before the Close is read (the gateway closed it as soon as
// the client's side ended) is what browsers report as 1006.
func TestStreamCloses(t *testing.T) { overStreams(t, testStreamCloses) }

// overStreams runs test over HTTP/2 (in a child process whose Caddy runs
// with GODEBUG=http2xconnect=1) and over HTTP/3 (without -race: Caddy's tls
// app races with QUIC handshakes under the detector, its own race).
func overStreams(t *testing.T, test func(t *testing.T, proto string)) {
	t.Run("h2", func(t *testing.T) {
		if inChild(t, "GODEBUG=http2xconnect=1") {
			return
		}
		test(t, "h2")
	})
	t.Run("h3", func(t *testing.T) {
		if raceEnabled {
			t.Skip("caddytls races with QUIC handshakes under -race (Caddy's own); run without -race")
		}
		test(t, "h3")
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

// TestStreamResume: session resume over HTTP/2 and HTTP/3 streams. The
// stream's 200 sets the resume cookie; the client reads two messages and
// answers the gateway's Ping (which confirms them: a stream has no TCP of
// its own to ask), then its stream is reset while the backend says three
// more; a new stream with the cookie gets exactly those three, in order,
// and the backend heard nothing.
func TestStreamResume(t *testing.T) { overStreams(t, testStreamResume) }

func testStreamResume(t *testing.T, proto string) {
	// The backend says what it is told to ("say:x" → "x"), and reports
	// any Close it gets.
	closes := make(chan frame.StatusCode, 4)
	speak := make(chan string, 16)
	backend := wstest.NewBackend(t, nil, func(p *wstest.Peer) {
		go func() {
			for s := range speak {
				p.WriteFrame(frame.OpText, []byte(s))
			}
		}()
		for {
			f, err := p.ReadFrame(time.Minute)
			if err != nil {
				return
			}
			if f.Op == frame.OpClose {
				code, _, _ := frame.ParseClose(f.Payload)
				closes <- code
				return
			}
		}
	})
	addr := httpsSite(t, `websocket /ws `+backend.Addr+` {
			mode terminate
			client {
				keepalive 300ms
				on_close resume
			}
		}`)
	type conn struct {
		p      *wstest.Peer
		cookie string
		reset  func()
	}
	dial := func(cookie string) conn {
		hdr := http.Header{}
		if cookie != "" {
			hdr.Set("Cookie", "caddy_ws_resume="+cookie)
		}
		var res *http.Response
		var c conn
		if proto == "h2" {
			p, s := dialH2(t, addr, "/ws", true, hdr)
			res, c.p = s.res, p
			c.reset = func() { s.cancel(); s.body.CloseWithError(context.Canceled) }
		} else {
			p, r, str := dialH3(t, addr, "/ws", hdr)
			if p == nil {
				t.Fatalf("extended CONNECT answered %d", r.StatusCode)
			}
			res, c.p = r, p
			c.reset = func() {
				str.CancelWrite(quic.StreamErrorCode(http3.ErrCodeRequestCanceled))
				str.CancelRead(quic.StreamErrorCode(http3.ErrCodeRequestCanceled))
			}
		}
		for _, ck := range res.Cookies() {
			if ck.Name == "caddy_ws_resume" {
				c.cookie = ck.Value
			}
		}
		if c.cookie == "" {
			t.Fatalf("no resume cookie on the stream's 200: %v", res.Header)
		}
		return c
	}
	read := func(c conn, want string) {
		t.Helper()
		for {
			f, err := c.p.ReadFrame(5 * time.Second)
			if err != nil {
				t.Fatalf("waiting for %q: %v", want, err)
			}
			if f.Op == frame.OpPing {
				c.p.WriteFrame(frame.OpPong, f.Payload)
				continue
			}
			if string(f.Payload) != want {
				t.Fatalf("got %q, want %q", f.Payload, want)
			}
			return
		}
	}
	first := dial("")
	speak <- "one"
	speak <- "two"
	read(first, "one")
	read(first, "two")
	// The gateway's next Ping, answered, confirms both.
	for {
		f, err := first.p.ReadFrame(5 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if f.Op == frame.OpPing {
			first.p.WriteFrame(frame.OpPong, f.Payload)
			break
		}
	}
	time.Sleep(100 * time.Millisecond)
	first.reset()
	time.Sleep(300 * time.Millisecond)
	for _, m := range []string{"three", "four", "five"} {
		speak <- m
	}
	time.Sleep(100 * time.Millisecond)
	again := dial(first.cookie)
	for _, m := range []string{"three", "four", "five"} {
		read(again, m)
	}
	speak <- "six"
	read(again, "six")
	select {
	case code := <-closes:
		t.Fatalf("the backend got Close %d", code)
	default:
	}
}
