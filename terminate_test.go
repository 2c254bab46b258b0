package websocket_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/gorilla/websocket"

	"github.com/caddy-websocket/caddy-websocket/examples/legacychat"
	"github.com/caddy-websocket/caddy-websocket/internal/frame"
	"github.com/caddy-websocket/caddy-websocket/internal/wstest"
)

func TestTerminateEcho(t *testing.T) {
	echo := echoBackend(t)
	addr := wstest.StartCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
		websocket %s {
			mode terminate
			max_message_size 8MiB
		}
	}`, hostOf(echo)))
	for _, compress := range []bool{false, true} {
		d := websocket.Dialer{EnableCompression: compress}
		c, res, err := d.Dial("ws://"+addr+"/", nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := res.Header.Get("Sec-WebSocket-Extensions"); (got != "") != compress {
			t.Fatalf("compression %v: extensions %q", compress, got)
		}
		roundTrips(t, c, fmt.Sprint("compression ", compress), 0, 1, 125, 126, 65535, 65536, 1<<20, 4<<20)
		c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(4001, "done"), time.Now().Add(time.Second))
		_, _, err = c.ReadMessage()
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != 4001 {
			t.Fatalf("close: %v", err)
		}
		c.Close()
	}
}

// roundTrips sends text and binary messages of each size on c and checks
// that each comes back whole (an echo behind the gateway).
func roundTrips(t *testing.T, c *websocket.Conn, what string, sizes ...int) {
	t.Helper()
	for _, n := range sizes {
		for _, typ := range []int{websocket.TextMessage, websocket.BinaryMessage} {
			msg := bytes.Repeat([]byte("abcdefgh"), n/8+1)[:n]
			if typ == websocket.BinaryMessage {
				rand.Read(msg)
			}
			c.SetWriteDeadline(time.Now().Add(10 * time.Second))
			if err := c.WriteMessage(typ, msg); err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			gt, got, err := c.ReadMessage()
			if err != nil || gt != typ || !bytes.Equal(got, msg) {
				t.Fatalf("%s, %d bytes type %d: got %d bytes type %d, %v", what, n, typ, len(got), gt, err)
			}
		}
	}
}

// TestTerminateProtocolErrors: each violation gets the right Close code,
// and the backend never sees the bad frame.
func TestTerminateProtocolErrors(t *testing.T) {
	wstest.NoLeaks(t)
	seen := make(chan wstest.Frame, 100)
	backend := wstest.NewBackend(t, nil, func(p *wstest.Peer) {
		for {
			f, err := p.ReadFrame(10 * time.Second)
			if err != nil {
				return
			}
			seen <- f
			if f.Op == frame.OpClose {
				p.Write(wstest.EncodeFrame(false, true, 0, frame.OpClose, f.Payload))
				return
			}
		}
	})
	addr := wstest.StartCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
		websocket %s {
			mode terminate
			max_message_size 1KiB
			compression off
		}
	}`, backend.Addr))
	m := func(fin bool, rsv byte, op frame.Opcode, p string) []byte {
		return wstest.EncodeFrame(true, fin, rsv, op, []byte(p))
	}
	cases := []struct {
		name  string
		bytes []byte
		code  frame.StatusCode
	}{
		{"unmasked", wstest.EncodeFrame(false, true, 0, frame.OpText, []byte("hi")), 1002},
		{"rsv1 without deflate", m(true, frame.Rsv1, frame.OpText, "hi"), 1002},
		{"rsv2", m(true, frame.Rsv2, frame.OpBinary, "hi"), 1002},
		{"reserved opcode", m(true, 0, 0x3, "hi"), 1002},
		{"reserved control opcode", m(true, 0, 0xb, ""), 1002},
		{"fragmented ping", m(false, 0, frame.OpPing, "hi"), 1002},
		{"long ping", m(true, 0, frame.OpPing, strings.Repeat("x", 126)), 1002},
		{"lone continuation", m(true, 0, frame.OpContinuation, "hi"), 1002},
		{"text inside fragmented", append(m(false, 0, frame.OpText, "a"), m(true, 0, frame.OpText, "b")...), 1002},
		{"invalid utf-8", m(true, 0, frame.OpText, "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80"), 1007},
		{"invalid utf-8 across fragments", append(m(false, 0, frame.OpText, "\xce"), m(true, 0, frame.OpContinuation, "\x41")...), 1007},
		{"truncated utf-8", m(true, 0, frame.OpText, "\xce"), 1007},
		{"too big", m(true, 0, frame.OpBinary, strings.Repeat("x", 1025)), 1009},
		{"too big fragmented", append(m(false, 0, frame.OpBinary, strings.Repeat("x", 1000)), m(true, 0, frame.OpContinuation, strings.Repeat("x", 25))...), 1009},
		{"close code 1005", m(true, 0, frame.OpClose, "\x03\xed"), 1002},
		{"close code 999", m(true, 0, frame.OpClose, "\x03\xe7"), 1002},
		{"close one byte", m(true, 0, frame.OpClose, "\x03"), 1002},
		{"close bad reason", m(true, 0, frame.OpClose, "\x03\xe8\xff"), 1007},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for len(seen) > 0 {
				<-seen
			}
			p, res := wstest.Dial(t, addr, "")
			if p == nil {
				t.Fatalf("status %d", res.StatusCode)
			}
			p.Write(tc.bytes)
			f, err := p.ReadFrame(5 * time.Second)
			if err != nil || f.Op != frame.OpClose {
				t.Fatalf("want Close %d, got %v %v", tc.code, f.Op, err)
			}
			code, _, _ := frame.ParseClose(f.Payload)
			if code != tc.code {
				t.Fatalf("got Close %d (%q), want %d", code, f.Payload, tc.code)
			}
			// The backend got no data, only the gateway's Close.
			select {
			case f := <-seen:
				if f.Op != frame.OpClose {
					t.Fatalf("backend saw a %v frame %q", f.Op, f.Payload)
				}
			case <-time.After(3 * time.Second):
				t.Fatal("backend got no Close")
			}
		})
	}
}

func TestTerminateSubprotocols(t *testing.T) {
	backend := wstest.NewBackend(t, func(r *http.Request) string {
		if r.Header.Get("Sec-WebSocket-Extensions") != "" {
			return "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"
		}
		if strings.Contains(r.Header.Get("Sec-WebSocket-Protocol"), "chat.v2") {
			return wstest.Switch(r, "Sec-WebSocket-Protocol: chat.v2")
		}
		return wstest.Switch(r)
	}, func(p *wstest.Peer) { time.Sleep(time.Second) })
	addr := wstest.StartCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
		websocket %s {
			mode terminate
			subprotocols chat.v1 chat.v2
		}
	}`, backend.Addr))
	offer := func(protos string) *http.Response {
		extra := []string{"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"}
		if protos != "" {
			extra = append(extra, "Sec-WebSocket-Protocol: "+protos)
		}
		_, res := wstest.Dial(t, addr, wstest.UpgradeRequest(addr, "/", wstest.Key(), extra...))
		return res
	}
	if res := offer("chat.v1, chat.v2"); res.StatusCode != 101 || res.Header.Get("Sec-WebSocket-Protocol") != "chat.v2" ||
		res.Header.Get("Sec-WebSocket-Extensions") != "permessage-deflate; server_no_context_takeover; client_no_context_takeover" {
		t.Fatalf("backend's choice: %d %v", res.StatusCode, res.Header)
	}
	if res := offer("other, chat.v1"); res.StatusCode != 101 || res.Header.Get("Sec-WebSocket-Protocol") != "chat.v1" {
		t.Fatalf("first configured match: %d %v", res.StatusCode, res.Header)
	}
	if res := offer("other"); res.StatusCode != 400 {
		t.Fatalf("none of the required: %d", res.StatusCode)
	}
	if res := offer(""); res.StatusCode != 400 {
		t.Fatalf("no offer: %d", res.StatusCode)
	}
}

// restartable runs the legacy chat on a fixed loopback address that can be
// killed and started again, like a backend process being restarted.
type restartable struct {
	t    *testing.T
	addr string
	srv  *http.Server
	chat *legacychat.Server
}

func startChat(t *testing.T, addr string) *restartable {
	t.Helper()
	if addr == "" {
		addr = fmt.Sprintf("127.0.0.1:%d", wstest.FreePort(t))
	}
	var l net.Listener
	var err error
	for i := 0; i < 50; i++ { // the old socket may linger a moment
		if l, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	rs := &restartable{t: t, addr: addr, chat: legacychat.New(time.Minute)}
	rs.srv = &http.Server{Handler: rs.chat}
	go rs.srv.Serve(l)
	t.Cleanup(rs.kill)
	return rs
}

// kill stops the backend the hard way: listener gone, members dropped
// without a Close frame.
func (rs *restartable) kill() {
	rs.srv.Close()
	rs.chat.Drop()
}

// TestTerminateReconnect: the backend is killed and restarted while a
// client is connected; the client stays, and the messages it sent during
// the gap arrive, in order, once the backend is back.
func TestTerminateReconnect(t *testing.T) {
	wstest.NoLeaks(t)
	chat := startChat(t, "")
	addr := wstest.StartCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
		websocket %s {
			mode terminate
			backend {
				on_close reconnect
				reconnect_window 5s
			}
		}
	}`, chat.addr))
	c := dialWS(t, "ws://"+addr+"/ws")
	expect := func(want string) {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, m, err := c.ReadMessage()
		if err != nil || string(m) != want {
			t.Fatalf("want %q, got %q %v", want, m, err)
		}
	}
	c.WriteMessage(websocket.TextMessage, []byte("alice:before"))
	expect("alice:before")

	chat.kill()
	// A message written in the very instant the backend dies, before the
	// gateway has seen it go, dies with it (the gateway cannot know whether
	// the backend read it); the gap starts when the gateway notices.
	time.Sleep(200 * time.Millisecond)
	for i := 1; i <= 3; i++ {
		c.WriteMessage(websocket.TextMessage, []byte(fmt.Sprintf("alice:during %d", i)))
	}
	time.Sleep(500 * time.Millisecond)
	startChat(t, chat.addr)
	for i := 1; i <= 3; i++ {
		expect(fmt.Sprintf("alice:during %d", i))
	}
	c.WriteMessage(websocket.TextMessage, []byte("alice:after"))
	expect("alice:after")
}

// TestReconnectFollowsConfig: a reconnect runs under the connection's
// config of the moment. The connection starts on a, a reload adds b, a
// dies: the re-dial tries a, then b (the new config's list), and the
// connection counts against b from then on (admin list, least_conn: the
// next connection goes to a, back up, not to b).
func TestReconnectFollowsConfig(t *testing.T) {
	a, b := startChat(t, ""), startChat(t, "")
	admin := fmt.Sprintf("127.0.0.1:%d", wstest.FreePort(t))
	port := wstest.FreePort(t)
	config := func(upstreams string) string {
		return fmt.Sprintf(`{
	admin %s
	persist_config off
	auto_https off
	default_bind 127.0.0.1
}
http://127.0.0.1:%d {
	websocket %s {
		mode terminate
		lb_policy least_conn
		backend {
			on_close reconnect
			reconnect_window 5s
		}
	}
}
`, admin, port, upstreams)
	}
	wstest.LoadCaddyfile(t, config(a.addr))
	t.Cleanup(func() { caddy.Stop() })
	c := dialWS(t, fmt.Sprintf("ws://127.0.0.1:%d/ws", port))
	roundTripWS(t, c, "alice:on a")
	wstest.LoadCaddyfile(t, config(a.addr+" "+b.addr))
	roundTripWS(t, c, "alice:after the reload")

	a.kill()
	time.Sleep(300 * time.Millisecond) // the gateway sees a go and re-dials
	roundTripWS(t, c, "alice:after a died")
	upstreams := func() map[string]int {
		var list struct{ Connections []struct{ Upstream string } }
		adminJSON(t, "GET", "http://"+admin+"/websocket/connections", &list)
		out := map[string]int{}
		for _, v := range list.Connections {
			out[v.Upstream]++
		}
		return out
	}
	if got := upstreams(); got[b.addr] != 1 || len(got) != 1 {
		t.Fatalf("after the reconnect the admin list has %v, want the connection on b %s", got, b.addr)
	}

	startChat(t, a.addr)
	c2 := dialWS(t, fmt.Sprintf("ws://127.0.0.1:%d/ws", port))
	roundTripWS(t, c2, "bob:hi")
	if got := upstreams(); got[a.addr] != 1 || got[b.addr] != 1 {
		t.Fatalf("least_conn sent the new connection to the busier upstream: %v", got)
	}
}

// TestTerminateReconnectGivesUp: when the backend does not come back within
// the window, the client gets Close 1011 with the reason.
func TestTerminateReconnectGivesUp(t *testing.T) {
	wstest.NoLeaks(t)
	chat := startChat(t, "")
	addr := wstest.StartCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
		websocket %s {
			mode terminate
			backend {
				on_close reconnect
				reconnect_window 1s
			}
		}
	}`, chat.addr))
	c := dialWS(t, "ws://"+addr+"/ws")
	// A round trip first: the chat must have the member before the kill
	// can drop it.
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	c.WriteMessage(websocket.TextMessage, []byte("alice:hi"))
	if _, m, err := c.ReadMessage(); err != nil || string(m) != "alice:hi" {
		t.Fatalf("before the kill: %q %v", m, err)
	}
	chat.kill()
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _, err := c.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != 1011 || !strings.Contains(ce.Text, "backend unavailable") {
		t.Fatalf("got %v", err)
	}
	if el := time.Since(start); el < 900*time.Millisecond {
		t.Fatalf("gave up after %v, before the 1s window", el)
	}
}

// TestSlowClient: a client that stops reading is dropped after the write
// timeout, and the backend is told with Close 1001; the gateway holds at
// most one message meanwhile.
func TestSlowClient(t *testing.T) {
	wstest.NoLeaks(t)
	for _, mode := range []string{"tunnel", "terminate"} {
		t.Run(mode, func(t *testing.T) {
			backend, closed := floodingBackend(t)
			addr := wstest.StartCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
				websocket %s {
					mode %s
					client {
						write_timeout 1s
					}
				}
			}`, backend.Addr, mode))
			p, _ := wstest.Dial(t, addr, "")
			_ = p // never reads
			select {
			case code := <-closed:
				if code != 1001 {
					t.Fatalf("backend got Close %d", code)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the backend was not told that the client stopped reading")
			}
		})
	}
}

// floodingBackend writes 256 KiB frames to each connection until its
// writes block (or 250 MB went), and reports the Close code each one gets.
func floodingBackend(t *testing.T) (*wstest.Backend, <-chan frame.StatusCode) {
	closed := make(chan frame.StatusCode, 4)
	backend := wstest.NewBackend(t, nil, func(p *wstest.Peer) {
		big := wstest.EncodeFrame(false, true, 0, frame.OpBinary, make([]byte, 256<<10))
		go func() {
			for {
				f, err := p.ReadFrame(20 * time.Second)
				if err != nil {
					return
				}
				if f.Op == frame.OpClose {
					code, _, _ := frame.ParseClose(f.Payload)
					closed <- code
					return
				}
			}
		}()
		p.SetWriteDeadline(time.Now().Add(15 * time.Second))
		for range 1000 {
			if _, err := p.Write(big); err != nil {
				break
			}
		}
		time.Sleep(2 * time.Second)
	})
	return backend, closed
}
