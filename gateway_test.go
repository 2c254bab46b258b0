package websocket_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	"github.com/gorilla/websocket"

	_ "github.com/caddy-websocket/caddy-websocket"
	"github.com/caddy-websocket/caddy-websocket/examples/legacychat"
	"github.com/caddy-websocket/caddy-websocket/internal/frame"
	"github.com/caddy-websocket/caddy-websocket/internal/wstest"
)

// echoBackend is a gorilla/websocket echo server: an independent
// implementation on the far side of the gateway.
func echoBackend(t *testing.T) *httptest.Server {
	srv := httptest.NewServer(echoHandler())
	t.Cleanup(srv.Close)
	return srv
}

// echoHandler is a gorilla WebSocket echo server.
func echoHandler() http.Handler {
	up := websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }, ReadBufferSize: 64 << 10}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		for {
			typ, msg, err := c.ReadMessage()
			if err != nil {
				return
			}
			if err := c.WriteMessage(typ, msg); err != nil {
				return
			}
		}
	})
}

func hostOf(srv *httptest.Server) string { return strings.TrimPrefix(srv.URL, "http://") }

func dialWS(t *testing.T, url string) *websocket.Conn {
	t.Helper()
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	c, res, err := d.Dial(url, nil)
	if err != nil {
		answer := ""
		if res != nil {
			b, _ := io.ReadAll(res.Body)
			answer = fmt.Sprintf(" (%s: %s)", res.Status, strings.TrimSpace(string(b)))
		}
		t.Fatalf("dial %s: %v%s", url, err, answer)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestNonUpgradeGoesToNextHandler(t *testing.T) {
	chat := httptest.NewServer(legacychat.New(time.Minute))
	defer chat.Close()
	addr := wstest.StartCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
		websocket /ws %s
		reverse_proxy %s
	}`, hostOf(chat), hostOf(chat)))
	res, err := http.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || !bytes.Contains(body, []byte("Legacy chat")) {
		t.Fatalf("GET / through the gateway: %d %q", res.StatusCode, body[:min(len(body), 80)])
	}
}

func TestEchoMessagesOfAllSizes(t *testing.T) {
	echo := echoBackend(t)
	addr := wstest.StartCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
		websocket %s
	}`, hostOf(echo)))
	c := dialWS(t, "ws://"+addr+"/echo")
	for _, n := range []int{0, 1, 125, 126, 127, 65535, 65536, 100000, 1 << 20, 4 << 20} {
		for _, typ := range []int{websocket.TextMessage, websocket.BinaryMessage} {
			msg := make([]byte, n)
			if typ == websocket.BinaryMessage {
				rand.Read(msg)
			} else {
				for i := range msg {
					msg[i] = 'a' + byte(i%26)
				}
			}
			c.SetWriteDeadline(time.Now().Add(10 * time.Second))
			if err := c.WriteMessage(typ, msg); err != nil {
				t.Fatalf("write %d: %v", n, err)
			}
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			gt, got, err := c.ReadMessage()
			if err != nil {
				t.Fatalf("read %d: %v", n, err)
			}
			if gt != typ || !bytes.Equal(got, msg) {
				t.Fatalf("echo of %d bytes (type %d) came back as %d bytes (type %d)", n, typ, len(got), gt)
			}
		}
	}
	// Fragmented, through gorilla's streaming writer: several frames.
	w, _ := c.NextWriter(websocket.TextMessage)
	for i := 0; i < 5; i++ {
		w.Write([]byte(strings.Repeat("x", 10000)))
	}
	w.Close()
	_, got, err := c.ReadMessage()
	if err != nil || len(got) != 50000 {
		t.Fatalf("fragmented echo: %d bytes, %v", len(got), err)
	}
	// A clean close from the client comes back with the same code.
	c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(4000, "bye"), time.Now().Add(time.Second))
	_, _, err = c.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != 4000 {
		t.Fatalf("after the client's Close 4000: %v", err)
	}
}

// TestFramesPassUnchanged sends frames the gateway must not touch (masked
// fragments with a Ping between them, RSV1 set as permessage-deflate would,
// a large binary frame, an unknown subprotocol's text) and compares the
// bytes on the other side, in both directions.
func TestFramesPassUnchanged(t *testing.T) {
	var fromClient, fromBackend []byte
	big := make([]byte, 3<<20)
	rand.Read(big)
	var s []byte
	s = append(s, wstest.EncodeFrame(true, false, 0, frame.OpText, []byte("hel"))...)
	s = append(s, wstest.EncodeFrame(true, true, 0, frame.OpPing, []byte("between"))...)
	s = append(s, wstest.EncodeFrame(true, false, 0, frame.OpContinuation, []byte("lo "))...)
	s = append(s, wstest.EncodeFrame(true, true, 0, frame.OpContinuation, []byte("world"))...)
	s = append(s, wstest.EncodeFrame(true, true, frame.Rsv1, frame.OpText, []byte{0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00})...)
	s = append(s, wstest.EncodeFrame(true, true, 0, frame.OpBinary, big)...)
	s = append(s, wstest.EncodeFrame(true, true, 0, frame.OpPong, []byte("unsolicited"))...)
	s = append(s, wstest.EncodeFrame(true, true, 0, frame.OpBinary, nil)...)
	fromClient = s
	fromBackend = append(fromBackend, wstest.EncodeFrame(false, false, frame.Rsv1, frame.OpBinary, big[:70000])...)
	fromBackend = append(fromBackend, wstest.EncodeFrame(false, true, 0, frame.OpPong, []byte("between"))...)
	fromBackend = append(fromBackend, wstest.EncodeFrame(false, true, 0, frame.OpContinuation, big[70000:70001])...)
	fromBackend = append(fromBackend, wstest.EncodeFrame(false, true, 0, frame.OpText, nil)...)

	got := make(chan []byte, 1)
	backend := wstest.NewBackend(t, func(r *http.Request) string {
		return wstest.Switch(r, "Sec-WebSocket-Protocol: chat.v2", "Sec-WebSocket-Extensions: permessage-deflate")
	}, func(p *wstest.Peer) {
		b, err := p.ReadBytes(len(fromClient), 10*time.Second)
		if err != nil {
			t.Errorf("backend read: %v", err)
		}
		got <- b
		p.Write(fromBackend)
		time.Sleep(time.Second)
	})
	addr := wstest.StartCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
		websocket %s
	}`, backend.Addr))
	req := wstest.UpgradeRequest(addr, "/ws?room=1", wstest.Key(),
		"Sec-WebSocket-Protocol: chat.v1, chat.v2", "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits")
	p, res := wstest.Dial(t, addr, req)
	if p == nil {
		t.Fatalf("status %d", res.StatusCode)
	}
	if res.Header.Get("Sec-WebSocket-Protocol") != "chat.v2" || res.Header.Get("Sec-WebSocket-Extensions") != "permessage-deflate" {
		t.Fatalf("101 headers not passed on: %v", res.Header)
	}
	r := <-backend.Requests
	if r.URL.String() != "/ws?room=1" || r.Header.Get("Sec-WebSocket-Protocol") != "chat.v1, chat.v2" ||
		!strings.Contains(r.Header.Get("Sec-WebSocket-Extensions"), "client_max_window_bits") {
		t.Fatalf("backend got %s %v", r.URL, r.Header)
	}
	if r.Header.Get("X-Forwarded-For") != "127.0.0.1" || r.Header.Get("X-Forwarded-Host") != addr {
		t.Fatalf("X-Forwarded-* not set: %v", r.Header)
	}

	if _, err := p.Write(fromClient); err != nil {
		t.Fatal(err)
	}
	if b := <-got; !bytes.Equal(b, fromClient) {
		t.Fatalf("backend received %d bytes that differ from the %d the client sent", len(b), len(fromClient))
	}
	b, err := p.ReadBytes(len(fromBackend), 10*time.Second)
	if err != nil || !bytes.Equal(b, fromBackend) {
		t.Fatalf("client received %d bytes that differ from the backend's %d: %v", len(b), len(fromBackend), err)
	}
}

// TestBytesBufferedAtHijack: frames that arrive in the same packet as the
// handshake, on either side, must not be lost.
func TestBytesBufferedAtHijack(t *testing.T) {
	early := wstest.EncodeFrame(false, true, 0, frame.OpText, []byte("hello from the backend"))
	backend := wstest.NewBackend(t, func(r *http.Request) string {
		return wstest.Switch(r) + string(early)
	}, func(p *wstest.Peer) {
		f, err := p.ReadFrame(5 * time.Second)
		if err != nil {
			return
		}
		p.Write(wstest.EncodeFrame(false, true, 0, frame.OpText, append([]byte("echo:"), f.Payload...)))
		time.Sleep(time.Second)
	})
	addr := wstest.StartCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
		websocket %s
	}`, backend.Addr))
	req := wstest.UpgradeRequest(addr, "/ws", wstest.Key()) +
		string(wstest.EncodeFrame(true, true, 0, frame.OpText, []byte("early client frame")))
	p, res := wstest.Dial(t, addr, req)
	if p == nil {
		t.Fatalf("status %d", res.StatusCode)
	}
	for _, want := range []string{"hello from the backend", "echo:early client frame"} {
		f, err := p.ReadFrame(5 * time.Second)
		if err != nil || string(f.Payload) != want {
			t.Fatalf("want %q, got %q (%v)", want, f.Payload, err)
		}
	}
}

func TestRefusedUpgrades(t *testing.T) {
	backend := wstest.NewBackend(t, nil, nil)
	addr := wstest.StartCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
		websocket %s {
			origins https://allowed.example
		}
	}`, backend.Addr))
	key := wstest.Key()
	good := func(extra ...string) string { return wstest.UpgradeRequest(addr, "/ws", key, extra...) }
	cases := []struct {
		name, req string
		status    int
		reason    string
	}{
		{"POST", strings.Replace(good(), "GET", "POST", 1), 400, "requires method GET"},
		{"HTTP/1.0", strings.Replace(good(), "HTTP/1.1", "HTTP/1.0", 1), 400, "requires HTTP/1.1"},
		{"no Upgrade", strings.Replace(good(), "Upgrade: websocket\r\n", "", 1), 400, "missing Upgrade: websocket"},
		{"bad Upgrade", strings.Replace(good(), "Upgrade: websocket", "Upgrade: websockets", 1), 400, "bad Upgrade header"},
		{"bad Connection", strings.Replace(good(), "Connection: Upgrade", "Connection: keep-alive", 1), 400, "bad Connection header"},
		{"short key", strings.Replace(good(), key, "dGhlIHNhbXBsZQ==", 1), 400, "bad Sec-WebSocket-Key"},
		{"version 8", strings.Replace(good(), "Version: 13", "Version: 8", 1), 426, "unsupported Sec-WebSocket-Version"},
		{"no version", strings.Replace(good(), "Sec-WebSocket-Version: 13\r\n", "", 1), 400, "missing Sec-WebSocket-Version"},
		{"foreign origin", good("Origin: https://evil.example"), 403, "is not allowed"},
		{"body", good("Content-Length: 5") + "hello", 400, "must not have a body"},
		{"chunked body", good("Transfer-Encoding: chunked") + "5\r\nhello\r\n0\r\n\r\n", 400, "must not have a body"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, res := wstest.Dial(t, addr, tc.req)
			if p != nil {
				t.Fatal("upgraded")
			}
			body, _ := io.ReadAll(io.LimitReader(res.Body, 1000))
			if res.StatusCode != tc.status || !strings.Contains(string(body), tc.reason) {
				t.Fatalf("got %d %q, want %d %q", res.StatusCode, body, tc.status, tc.reason)
			}
			if tc.status == 426 && res.Header.Get("Sec-WebSocket-Version") != "13" {
				t.Fatalf("426 without Sec-WebSocket-Version: 13: %v", res.Header)
			}
		})
	}
	if n := backend.Accepted.Load(); n != 0 {
		t.Fatalf("refused upgrades dialled the backend %d times", n)
	}
	// The listed origin, the request's own host, and "Connection:
	// keep-alive, Upgrade" are all fine.
	for _, extra := range [][]string{{"Origin: https://allowed.example"}, {"Origin: http://" + addr}} {
		if p, res := wstest.Dial(t, addr, good(extra...)); p == nil {
			t.Fatalf("%v refused: %d", extra, res.StatusCode)
		}
	}
	if p, res := wstest.Dial(t, addr, strings.Replace(good(), "Connection: Upgrade", "Connection: keep-alive, Upgrade", 1)); p == nil {
		t.Fatalf("Connection: keep-alive, Upgrade refused: %d", res.StatusCode)
	}
}

func TestBackendAnswers(t *testing.T) {
	wstest.NoLeaks(t)
	cases := []struct {
		name   string
		answer string
		status int
		body   string
	}{
		{"200 instead of 101", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 200, "hello"},
		{"302", "HTTP/1.1 302 Found\r\nLocation: /login\r\nContent-Length: 6\r\n\r\nlog in", 302, "log in"},
		{"404", "HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nno room\r\n", 404, "no room"},
		{"500", "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops", 500, "oops"},
		{"wrong accept", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: bm90IHRoZSByaWdodCBrZXk=\r\n\r\n", 502, "wrong Sec-WebSocket-Accept"},
		{"garbage", "SSH-2.0-OpenSSH\r\n\r\n", 502, "no valid HTTP response"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			backend := wstest.NewBackend(t, func(*http.Request) string { return tc.answer }, nil)
			addr := wstest.StartCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
				websocket %s
			}`, backend.Addr))
			p, res := wstest.Dial(t, addr, "")
			if p != nil {
				t.Fatal("upgraded")
			}
			body, _ := io.ReadAll(res.Body)
			if res.StatusCode != tc.status || !strings.Contains(string(body), tc.body) {
				t.Fatalf("got %d %q, want %d %q", res.StatusCode, body, tc.status, tc.body)
			}
		})
	}
}

func TestNoBackendReachable(t *testing.T) {
	wstest.NoLeaks(t)
	dead := fmt.Sprintf("127.0.0.1:%d", wstest.FreePort(t))
	backend := wstest.NewBackend(t, nil, func(p *wstest.Peer) { time.Sleep(500 * time.Millisecond) })
	addr := wstest.StartCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
		handle /one {
			websocket %s
		}
		handle /two {
			websocket %s %s
		}
	}`, dead, dead, backend.Addr))
	p, res := wstest.Dial(t, addr, wstest.UpgradeRequest(addr, "/one", wstest.Key()))
	if p != nil {
		t.Fatal("upgraded to a dead backend")
	}
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode != 502 || !strings.Contains(string(body), "no backend reachable") || !strings.Contains(string(body), "connection refused") {
		t.Fatalf("got %d %q", res.StatusCode, body)
	}
	// With a second upstream, the dead first one is skipped.
	if p, res := wstest.Dial(t, addr, wstest.UpgradeRequest(addr, "/two", wstest.Key())); p == nil {
		t.Fatalf("failover: status %d", res.StatusCode)
	}
}

func TestBackendHandshakeTimeout(t *testing.T) {
	wstest.NoLeaks(t)
	backend := wstest.NewBackend(t, func(*http.Request) string { time.Sleep(3 * time.Second); return "" }, nil)
	addr := wstest.StartCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
		websocket %s {
			handshake_timeout 500ms
		}
	}`, backend.Addr))
	p, res := wstest.Dial(t, addr, "")
	if p != nil {
		t.Fatal("upgraded")
	}
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode != 504 || !strings.Contains(string(body), "did not answer the upgrade within 500ms") {
		t.Fatalf("got %d %q", res.StatusCode, body)
	}
}

// TestBackendDiesMidStream: the backend drops the TCP connection without a
// Close frame; the client gets a Close frame (1011), not an abrupt end.
func TestBackendDiesMidStream(t *testing.T) {
	wstest.NoLeaks(t)
	backend := wstest.NewBackend(t, nil, func(p *wstest.Peer) {
		p.ReadFrame(5 * time.Second)
		p.Write(wstest.EncodeFrame(false, true, 0, frame.OpText, []byte("last words")))
		p.Conn.(interface{ SetLinger(int) error }).SetLinger(0) // RST
		p.Close()
	})
	addr := wstest.StartCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
		websocket %s
	}`, backend.Addr))
	c := dialWS(t, "ws://"+addr+"/")
	c.WriteMessage(websocket.TextMessage, []byte("hi"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, m, err := c.ReadMessage(); err != nil || string(m) != "last words" {
		t.Fatalf("%q %v", m, err)
	}
	_, _, err := c.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != 1011 {
		t.Fatalf("want Close 1011, got %v", err)
	}
}

// TestClientVanishes: the client's TCP connection ends without a Close
// frame; the backend gets Close 1001.
func TestClientVanishes(t *testing.T) {
	wstest.NoLeaks(t)
	got := make(chan wstest.Frame, 1)
	backend := wstest.NewBackend(t, nil, func(p *wstest.Peer) {
		f, err := p.ReadFrame(5 * time.Second)
		if err == nil {
			got <- f
		}
	})
	addr := wstest.StartCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
		websocket %s
	}`, backend.Addr))
	p, _ := wstest.Dial(t, addr, "")
	p.Close()
	select {
	case f := <-got:
		code, reason, ok := frame.ParseClose(f.Payload)
		if f.Op != frame.OpClose || !f.Masked || !ok || code != 1001 {
			t.Fatalf("backend got %v %q (masked %v)", f.Op, f.Payload, f.Masked)
		}
		t.Logf("backend got Close %d %q", code, reason)
	case <-time.After(5 * time.Second):
		t.Fatal("backend got no Close frame")
	}
}

// TestKeepaliveBothLegs: with keepalive on both legs, a silent client
// outlives the legacy chat's idle timeout several times over; the
// gateway's pings reach the client, and the backend's Pongs to the
// gateway's pings never do.
func TestKeepaliveBothLegs(t *testing.T) {
	chat := legacychat.New(time.Second)
	srv := httptest.NewServer(chat)
	defer srv.Close()
	addr := wstest.StartCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
		websocket %s {
			client {
				keepalive 300ms
				pong_timeout 1s
			}
			backend {
				keepalive 300ms
			}
		}
	}`, hostOf(srv)))
	p, res := wstest.Dial(t, addr, "")
	if p == nil {
		t.Fatalf("status %d", res.StatusCode)
	}
	deadline := time.Now().Add(3500 * time.Millisecond)
	pings := 0
	for time.Now().Before(deadline) {
		f, err := p.ReadFrame(time.Until(deadline))
		if err != nil {
			break // the read deadline
		}
		switch f.Op {
		case frame.OpPing:
			pings++
			p.WriteFrame(frame.OpPong, f.Payload)
		default:
			t.Fatalf("client got an unexpected %v frame %q", f.Op, f.Payload)
		}
	}
	if pings < 5 {
		t.Fatalf("client got %d pings in 3.5s at a 300ms keepalive", pings)
	}
	p.WriteFrame(frame.OpText, []byte("alice:still here"))
	for {
		f, err := p.ReadFrame(2 * time.Second)
		if err != nil {
			t.Fatalf("after 3.5s of silence (backend idle timeout 1s): %v", err)
		}
		if f.Op == frame.OpPing {
			p.WriteFrame(frame.OpPong, f.Payload)
			continue
		}
		if f.Op != frame.OpText || string(f.Payload) != "alice:still here" {
			t.Fatalf("got %v %q", f.Op, f.Payload)
		}
		break
	}
}

// TestPongTimeout: a backend that never answers pings is closed, and the
// client is told why with 1011.
func TestPongTimeout(t *testing.T) {
	wstest.NoLeaks(t)
	got := make(chan wstest.Frame, 10)
	backend := wstest.NewBackend(t, nil, func(p *wstest.Peer) {
		for {
			f, err := p.ReadFrame(5 * time.Second)
			if err != nil {
				return
			}
			got <- f // and never a Pong
		}
	})
	addr := wstest.StartCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
		websocket %s {
			backend {
				keepalive 200ms
				pong_timeout 300ms
			}
		}
	}`, backend.Addr))
	p, _ := wstest.Dial(t, addr, "")
	f, err := p.ReadFrame(3 * time.Second)
	if err != nil || f.Op != frame.OpClose {
		t.Fatalf("client: %v %v", f.Op, err)
	}
	code, reason, _ := frame.ParseClose(f.Payload)
	if code != 1011 || reason != "backend did not answer ping" {
		t.Fatalf("client got Close %d %q", code, reason)
	}
	if f := <-got; f.Op != frame.OpPing || !f.Masked {
		t.Fatalf("backend's first frame: %v masked=%v", f.Op, f.Masked)
	}
	if f := <-got; f.Op != frame.OpClose {
		t.Fatalf("backend's second frame: %v", f.Op)
	}
}

// TestIdleTimeout: a client that sends nothing is closed with 1001 after
// its idle timeout, even while it answers keepalive pings.
func TestIdleTimeout(t *testing.T) {
	wstest.NoLeaks(t)
	backend := wstest.NewBackend(t, nil, wstest.Drain(5*time.Second))
	addr := wstest.StartCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
		websocket %s {
			client {
				keepalive 100ms
				idle_timeout 700ms
			}
		}
	}`, backend.Addr))
	p, _ := wstest.Dial(t, addr, "")
	start := time.Now()
	for {
		f, err := p.ReadFrame(3 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if f.Op == frame.OpPing {
			p.WriteFrame(frame.OpPong, f.Payload)
			continue
		}
		code, reason, _ := frame.ParseClose(f.Payload)
		if f.Op != frame.OpClose || code != 1001 || reason != "idle timeout" {
			t.Fatalf("got %v %d %q", f.Op, code, reason)
		}
		if el := time.Since(start); el < 600*time.Millisecond {
			t.Fatalf("closed after %v, before the 700ms idle timeout", el)
		}
		break
	}
	// The gateway, as the server, closes TCP after the closing handshake.
	p.WriteFrame(frame.OpClose, wstest.ClosePayload(1001, ""))
	if _, err := p.ReadFrame(3 * time.Second); !errors.Is(err, io.EOF) {
		t.Fatalf("after the closing handshake: %v, want EOF", err)
	}
}

// TestReloadKeepsConnections: a config reload leaves live connections
// running; stopping Caddy closes them with 1001.
func TestReloadKeepsConnections(t *testing.T) {
	echo := echoBackend(t)
	sites := fmt.Sprintf(`http://127.0.0.1:{PORT} {
		websocket %s {
			client {
				keepalive %%s
			}
		}
	}`, hostOf(echo))
	addr := wstest.StartCaddy(t, fmt.Sprintf(sites, "20s"))
	c := dialWS(t, "ws://"+addr+"/")
	roundTrip := func(msg string) { t.Helper(); roundTripWS(t, c, msg) }
	roundTrip("before")
	port := strings.TrimPrefix(addr, "127.0.0.1:")
	for i := 0; i < 3; i++ {
		wstest.LoadCaddyfile(t, "{\n\tadmin off\n\tpersist_config off\n\tauto_https off\n\tdefault_bind 127.0.0.1\n}\n"+
			strings.ReplaceAll(fmt.Sprintf(sites, fmt.Sprintf("%ds", 10+i)), "{PORT}", port))
		roundTrip(fmt.Sprintf("after reload %d", i+1))
	}
	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _, err := c.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != 1001 || ce.Text != "server shutting down" {
		t.Fatalf("after caddy stop: %v", err)
	}
}

// TestReloadHandOverRules: on a reload, a connection moves to the newest
// handler that serves its upstream in its mode, and runs under that
// handler's policies from then on; one whose upstream is no longer served
// in its mode is closed with 1012 after the old handler's close delay.
func TestReloadHandOverRules(t *testing.T) {
	e1, e2 := echoBackend(t), echoBackend(t)
	ports := []int{wstest.FreePort(t), wstest.FreePort(t)}
	config := func(site1, site2 string) string {
		return fmt.Sprintf("{\n\tadmin off\n\tpersist_config off\n\tauto_https off\n\tdefault_bind 127.0.0.1\n}\n"+
			"http://127.0.0.1:%d {\n\twebsocket %s {\n%s\n\t}\n}\nhttp://127.0.0.1:%d {\n\twebsocket %s {\n%s\n\t}\n}\n",
			ports[0], hostOf(e1), site1, ports[1], hostOf(e2), site2)
	}
	wstest.LoadCaddyfile(t, config("\t\treload_close_delay 100ms", "\t\tmode terminate\n\t\treload_close_delay 100ms"))
	t.Cleanup(func() { caddy.Stop() })
	tunnel := dialWS(t, fmt.Sprintf("ws://127.0.0.1:%d/", ports[0]))
	term := dialWS(t, fmt.Sprintf("ws://127.0.0.1:%d/", ports[1]))
	for _, c := range []*websocket.Conn{tunnel, term} {
		roundTripWS(t, c, "before")
	}

	// Site 1 now terminates e1; site 2 pings its clients every 300 ms.
	wstest.LoadCaddyfile(t, config("\t\tmode terminate", "\t\tmode terminate\n\t\tclient {\n\t\t\tkeepalive 300ms\n\t\t}"))

	tunnel.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _, err := tunnel.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != 1012 || ce.Text != "upstream now served in terminate mode; reconnect" {
		t.Fatalf("tunnel connection after its mode changed: %v", err)
	}

	roundTripWS(t, term, "after")
	var pings atomic.Int64
	term.SetPingHandler(func(data string) error {
		pings.Add(1)
		return term.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
	})
	term.SetReadDeadline(time.Now().Add(1500 * time.Millisecond))
	var ne net.Error
	if _, _, err := term.ReadMessage(); !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("terminate connection, reading: %v", err)
	}
	if n := pings.Load(); n < 3 {
		t.Fatalf("%d pings in 1.5 s under the new config's 300 ms keepalive", n)
	}
}

// roundTripWS sends msg on c and expects it back.
func roundTripWS(t *testing.T, c *websocket.Conn, msg string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if err := c.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
		t.Fatal(err)
	}
	if _, m, err := c.ReadMessage(); err != nil || string(m) != msg {
		t.Fatalf("%q: %q %v", msg, m, err)
	}
}
