package websocket_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/gorilla/websocket"

	"github.com/caddy-websocket/caddy-websocket/examples/legacychat"
	"github.com/caddy-websocket/caddy-websocket/internal/frame"
	"github.com/caddy-websocket/caddy-websocket/internal/wstest"
)

// TestLearnedBackendTimeout: a backend with a 2 s idle timeout drops the
// first connection (keepalive starts at keepalive_max, 20 s); the gateway
// learns from that drop and keeps later connections alive by pinging at
// half of it.
func TestLearnedBackendTimeout(t *testing.T) {
	chat := httptest.NewServer(legacychat.New(2 * time.Second))
	defer chat.Close()
	addr := wstest.StartCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
		websocket %s {
			backend {
				keepalive auto
			}
		}
	}`, hostOf(chat)))

	first := dialWS(t, "ws://"+addr+"/ws")
	first.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _, err := first.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != 1011 {
		t.Fatalf("first connection: %v, want the backend's idle drop as 1011", err)
	}

	second := dialWS(t, "ws://"+addr+"/ws")
	time.Sleep(5 * time.Second) // 2.5 × the backend's idle timeout, in silence
	second.WriteMessage(websocket.TextMessage, []byte("bob:still here"))
	second.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, m, err := second.ReadMessage(); err != nil || string(m) != "bob:still here" {
		t.Fatalf("second connection after 5s of silence: %q %v", m, err)
	}
	learned := wstest.LogEntries(t, "websocket learned backend idle timeout")
	if len(learned) != 1 || learned[0]["keepalive"].(float64) < 0.9 || learned[0]["keepalive"].(float64) > 1.1 {
		t.Fatalf("learned: %v", learned)
	}
	line, _ := json.Marshal(learned[0])
	t.Logf("%s", line)
}

// TestReloadAppliesPolicies: a live connection takes the keepalive of the
// config that replaced the one that accepted it.
func TestReloadAppliesPolicies(t *testing.T) {
	backend := wstest.NewBackend(t, nil, wstest.Drain(20*time.Second))
	sites := `http://127.0.0.1:{PORT} {
		websocket ` + backend.Addr + ` {
			client {
				keepalive %s
			}
		}
	}`
	addr := wstest.StartCaddy(t, fmt.Sprintf(sites, "20s"))
	p, _ := wstest.Dial(t, addr, "")
	if f, err := p.ReadFrame(700 * time.Millisecond); err == nil {
		t.Fatalf("a %v frame before the reload", f.Op)
	}
	port := strings.TrimPrefix(addr, "127.0.0.1:")
	wstest.LoadCaddyfile(t, "{\n\tadmin off\n\tpersist_config off\n\tauto_https off\n\tdefault_bind 127.0.0.1\n}\n"+
		strings.ReplaceAll(fmt.Sprintf(sites, "200ms"), "{PORT}", port))
	for i := 0; i < 3; i++ {
		f, err := p.ReadFrame(time.Second)
		if err != nil || f.Op != frame.OpPing {
			t.Fatalf("ping %d after the reload to a 200ms keepalive: %v %v", i, f.Op, err)
		}
		p.WriteFrame(frame.OpPong, f.Payload)
	}
}

// TestAnnounce: the 101 and plain requests on the route carry the
// gateway's timeouts towards the client.
func TestAnnounce(t *testing.T) {
	echo := echoBackend(t)
	addrs := wstest.StartCaddyPorts(t, fmt.Sprintf(`http://127.0.0.1:{PORT1} {
		route {
			websocket %[1]s {
				client {
					keepalive 25s
					pong_timeout 10s
					idle_timeout 5m
					announce
				}
			}
			respond "plain"
		}
	}
	http://127.0.0.1:{PORT2} {
		websocket %[1]s {
			mode terminate
			client {
				keepalive off
				announce
			}
		}
	}`, hostOf(echo)), 2)
	_, res := wstest.Dial(t, addrs[0], "")
	if got := res.Header.Get("WebSocket-Idle-Timeout"); got != "ping=25; pong=10; idle=300" {
		t.Fatalf("tunnel 101: %q %v", got, res.Header)
	}
	plain, err := http.Get("http://" + addrs[0] + "/")
	if err != nil {
		t.Fatal(err)
	}
	plain.Body.Close()
	if got := plain.Header.Get("WebSocket-Idle-Timeout"); got != "ping=25; pong=10; idle=300" {
		t.Fatalf("plain GET: %q", got)
	}
	_, res = wstest.Dial(t, addrs[1], "")
	if got := res.Header.Get("WebSocket-Idle-Timeout"); got != "none" {
		t.Fatalf("terminate 101 with everything off: %q", got)
	}
}

// TestLearnedClientNetwork: a client that vanishes after 3 s of silence
// teaches the gateway its network's timeout; the next client from that
// network is pinged at half of it, and told so.
func TestLearnedClientNetwork(t *testing.T) {
	backend := wstest.NewBackend(t, nil, wstest.Drain(20*time.Second))
	addr := wstest.StartCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
		websocket %s {
			client {
				keepalive auto
				announce
			}
		}
	}`, backend.Addr))
	p, res := wstest.Dial(t, addr, "")
	if got := res.Header.Get("WebSocket-Idle-Timeout"); got != "ping=20; pong=15" {
		t.Fatalf("before learning: %q", got)
	}
	// A little over 3 s: the gateway's silence counts from the relay's
	// start, a moment after the 101 the client's sleep counts from.
	time.Sleep(3*time.Second + 50*time.Millisecond)
	p.Conn.(interface{ SetLinger(int) error }).SetLinger(0)
	p.Close() // vanishes, as behind a NAT that forgot the mapping

	var got string
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		_, res = wstest.Dial(t, addr, "")
		if got = res.Header.Get("WebSocket-Idle-Timeout"); strings.HasPrefix(got, "ping=1.") {
			break
		}
	}
	if !strings.HasPrefix(got, "ping=1.5") {
		t.Fatalf("after a client vanished at 3s: %q", got)
	}
}

// TestMaxLifetime closes with 1001 and the configured reason.
func TestMaxLifetime(t *testing.T) {
	echo := echoBackend(t)
	addr := wstest.StartCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
		websocket %s {
			max_lifetime 1s
			close_reason "please reconnect"
		}
	}`, hostOf(echo)))
	c := dialWS(t, "ws://"+addr+"/")
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _, err := c.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != 1001 || ce.Text != "please reconnect" {
		t.Fatalf("%v", err)
	}
	if el := time.Since(start); el < 850*time.Millisecond || el > 1500*time.Millisecond {
		t.Fatalf("closed after %v, want 1s ± 10%%", el)
	}
}

// TestReloadsUnderTraffic reloads Caddy through its admin API (POST /load)
// 20 times while members chat, changing the keepalive each time: no
// connection is lost, no message is lost or reordered. Then a reload that
// removes the upstream closes the connections with 1012.
func TestReloadsUnderTraffic(t *testing.T) {
	room := legacychat.New(time.Minute)
	chat := httptest.NewServer(room)
	defer chat.Close()
	admin := fmt.Sprintf("127.0.0.1:%d", wstest.FreePort(t))
	port := wstest.FreePort(t)
	other := echoBackend(t)
	config := func(keepalive string, upstream string) []byte {
		cf := fmt.Sprintf(`{
	admin %s
	persist_config off
	auto_https off
	default_bind 127.0.0.1
}
http://127.0.0.1:%d {
	websocket %s {
		reload_close_delay 200ms
		client {
			keepalive %s
		}
	}
}`, admin, port, upstream, keepalive)
		js, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), nil)
		if err != nil {
			t.Fatal(err)
		}
		return js
	}
	wstest.LoadJSON(t, config("20s", hostOf(chat)))
	post := func(js []byte) {
		t.Helper()
		// Caddy swaps its admin server as a config loads; a request that
		// lands on the old one as it closes gets EOF. Retry those (a load
		// is idempotent), never an answered one.
		var res *http.Response
		var err error
		for try := 0; try < 5; try++ {
			if res, err = http.Post("http://"+admin+"/load", "application/json", bytes.NewReader(js)); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 200 {
			t.Fatalf("POST /load: %d %s", res.StatusCode, body)
		}
	}

	const members, perMember = 4, 100
	conns := make([]*websocket.Conn, members)
	for i := range conns {
		conns[i] = dialWS(t, fmt.Sprintf("ws://127.0.0.1:%d/ws", port))
	}
	// The backend joins a member just after its 101: wait for the room.
	for end := time.Now().Add(5 * time.Second); room.Members() < members && time.Now().Before(end); {
		time.Sleep(10 * time.Millisecond)
	}
	// Each member reads everything everyone says; every member's own
	// messages must arrive in order, all of them.
	var wg sync.WaitGroup
	errs := make(chan error, members)
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			next := make([]int, members)
			for total := 0; total < members*perMember; total++ {
				c.SetReadDeadline(time.Now().Add(20 * time.Second))
				_, m, err := c.ReadMessage()
				if err != nil {
					errs <- fmt.Errorf("member %d after %d messages: %v", i, total, err)
					return
				}
				var from, seq int
				if _, err := fmt.Sscanf(string(m), "m%d:%d", &from, &seq); err != nil || seq != next[from] {
					errs <- fmt.Errorf("member %d got %q, want m%d:%d", i, m, from, next[from])
					return
				}
				next[from]++
			}
		}()
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for seq := 0; seq < perMember; seq++ {
			for i, c := range conns {
				c.WriteMessage(websocket.TextMessage, []byte(fmt.Sprintf("m%d:%d", i, seq)))
			}
			time.Sleep(15 * time.Millisecond)
		}
	}()
	for i := 0; i < 20; i++ {
		post(config(fmt.Sprintf("%ds", 10+i), hostOf(chat)))
	}
	<-done
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}

	// A config without the chat upstream: its connections get 1012.
	post(config("20s", hostOf(other)))
	for i, c := range conns {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, _, err := c.ReadMessage()
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != int(frame.CloseServiceRestart) {
			t.Fatalf("member %d after its upstream was removed: %v", i, err)
		}
	}
}
