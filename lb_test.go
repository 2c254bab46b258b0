package websocket_test

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/caddy-websocket/caddy-websocket/internal/wstest"
)

// namedBackend is a WebSocket backend that says its name first, then
// echoes; it can be stopped and started again on the same address.
type namedBackend struct {
	name, addr string
	mu         sync.Mutex
	srv        *httptest.Server
	conns      int
}

func newNamedBackend(t *testing.T, name, addr string) *namedBackend {
	b := &namedBackend{name: name, addr: addr}
	b.start(t)
	t.Cleanup(b.stop)
	return b
}

func (b *namedBackend) start(t *testing.T) {
	t.Helper()
	up := websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}
	l, err := net.Listen("tcp", b.addr)
	for i := 0; err != nil && i < 50; i++ {
		time.Sleep(20 * time.Millisecond)
		l, err = net.Listen("tcp", b.addr)
	}
	if err != nil {
		t.Fatal(err)
	}
	b.addr = l.Addr().String()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		b.mu.Lock()
		b.conns++
		b.mu.Unlock()
		c.WriteMessage(websocket.TextMessage, []byte(b.name))
		for {
			typ, m, err := c.ReadMessage()
			if err != nil {
				return
			}
			c.WriteMessage(typ, m)
		}
	}))
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	b.mu.Lock()
	b.srv = srv
	b.mu.Unlock()
}

func (b *namedBackend) stop() {
	b.mu.Lock()
	srv := b.srv
	b.srv = nil
	b.mu.Unlock()
	if srv != nil {
		srv.CloseClientConnections()
		srv.Close()
	}
}

// whoAnswers opens a WebSocket with the given headers (and, from, a source
// address) and returns the name of the backend that answered, the
// response, and the open connection.
func whoAnswers(t *testing.T, url string, hdr http.Header, from string) (string, *http.Response, *websocket.Conn) {
	t.Helper()
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	if from != "" {
		d.NetDial = func(network, addr string) (net.Conn, error) {
			nd := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
			return nd.Dial(network, addr)
		}
	}
	c, res, err := d.Dial(url, hdr)
	if err != nil {
		status := 0
		if res != nil {
			status = res.StatusCode
		}
		t.Fatalf("dial %s: %v (status %d)", url, err, status)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, name, err := c.ReadMessage()
	if err != nil {
		t.Fatalf("first message: %v", err)
	}
	return string(name), res, c
}

func deadAddr(t *testing.T) string {
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	a := l.Addr().String()
	l.Close()
	return a
}

// TestSelectionPolicies: Caddy's own selection policies choose the
// backend of each WebSocket, as reverse_proxy would for the same inputs.
func TestSelectionPolicies(t *testing.T) {
	b0 := newNamedBackend(t, "b0", "127.0.0.1:0")
	b1 := newNamedBackend(t, "b1", "127.0.0.1:0")
	dead := deadAddr(t)
	addr := wstest.StartCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
		websocket /first %[1]s %[2]s %[3]s {
			lb_policy first
		}
		websocket /rr %[1]s %[2]s {
			lb_policy round_robin
		}
		websocket /rr-dead %[1]s %[3]s %[2]s {
			lb_policy round_robin
		}
		websocket /iphash %[1]s %[2]s {
			lb_policy ip_hash
		}
		websocket /cookie %[1]s %[2]s {
			lb_policy cookie lb_ws
		}
		websocket /header %[1]s %[2]s {
			lb_policy header X-Room
		}
		websocket /urihash* %[1]s %[2]s {
			lb_policy uri_hash
		}
	}`, b0.addr, b1.addr, dead))
	base := "ws://" + addr

	t.Run("first", func(t *testing.T) {
		for range 4 {
			if n, _, c := whoAnswers(t, base+"/first", nil, ""); n != "b0" {
				t.Fatalf("first: %s", n)
			} else {
				c.Close()
			}
		}
	})
	t.Run("round_robin", func(t *testing.T) {
		var order []string
		for range 6 {
			n, _, c := whoAnswers(t, base+"/rr", nil, "")
			order = append(order, n)
			c.Close()
		}
		for i := 1; i < len(order); i++ {
			if order[i] == order[i-1] {
				t.Fatalf("round_robin: %v", order)
			}
		}
		// A dead upstream in the list: every connection still gets one
		// of the others (no health check: each finds it dead and moves on).
		count := map[string]int{}
		for range 6 {
			n, _, c := whoAnswers(t, base+"/rr-dead", nil, "")
			count[n]++
			c.Close()
		}
		if count["b0"]+count["b1"] != 6 || count["b1"] == 0 || count["b0"] == 0 {
			t.Fatalf("round_robin with a dead upstream: %v", count)
		}
	})
	t.Run("ip_hash", func(t *testing.T) {
		for _, from := range []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"} {
			first, _, c := whoAnswers(t, base+"/iphash", nil, from)
			c.Close()
			for range 3 {
				if n, _, c := whoAnswers(t, base+"/iphash", nil, from); n != first {
					t.Fatalf("ip_hash from %s: %s then %s", from, first, n)
				} else {
					c.Close()
				}
			}
		}
	})
	t.Run("cookie", func(t *testing.T) {
		first, res, c := whoAnswers(t, base+"/cookie", nil, "")
		c.Close()
		var cookie *http.Cookie
		for _, ck := range res.Cookies() {
			if ck.Name == "lb_ws" {
				cookie = ck
			}
		}
		if cookie == nil {
			t.Fatalf("no lb_ws cookie on the 101: %v", res.Header)
		}
		for range 5 {
			hdr := http.Header{"Cookie": {cookie.Name + "=" + cookie.Value}}
			if n, _, c := whoAnswers(t, base+"/cookie", hdr, ""); n != first {
				t.Fatalf("cookie: %s then %s", first, n)
			} else {
				c.Close()
			}
		}
	})
	t.Run("header", func(t *testing.T) {
		seen := map[string]bool{}
		for _, room := range []string{"a", "b", "c", "d", "e", "f"} {
			hdr := http.Header{"X-Room": {room}}
			first, _, c := whoAnswers(t, base+"/header", hdr, "")
			c.Close()
			seen[first] = true
			if n, _, c := whoAnswers(t, base+"/header", hdr, ""); n != first {
				t.Fatalf("header %s: %s then %s", room, first, n)
			} else {
				c.Close()
			}
		}
		if len(seen) != 2 {
			t.Logf("six rooms all hashed to %v", seen)
		}
	})
	t.Run("uri_hash", func(t *testing.T) {
		for _, p := range []string{"/urihash/1", "/urihash/2", "/urihash/3"} {
			first, _, c := whoAnswers(t, base+p, nil, "")
			c.Close()
			if n, _, c := whoAnswers(t, base+p, nil, ""); n != first {
				t.Fatalf("uri_hash %s: %s then %s", p, first, n)
			} else {
				c.Close()
			}
		}
	})
}

// TestLeastConn: least_conn counts live WebSockets (and handshakes under
// way): 200 long-lived connections opened 20 at a time spread evenly over
// four backends, within ±10 %.
func TestLeastConn(t *testing.T) {
	var bs []*namedBackend
	var addrs []string
	for i := range 4 {
		b := newNamedBackend(t, fmt.Sprintf("b%d", i), "127.0.0.1:0")
		bs = append(bs, b)
		addrs = append(addrs, b.addr)
	}
	addr := wstest.StartCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
		websocket %s {
			lb_policy least_conn
		}
	}`, strings.Join(addrs, " ")))
	count := map[string]int{}
	var mu sync.Mutex
	for batch := 0; batch < 10; batch++ {
		var wg sync.WaitGroup
		for range 20 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				n, _, c := whoAnswers(t, "ws://"+addr+"/", nil, "")
				t.Cleanup(func() { c.Close() })
				mu.Lock()
				count[n]++
				mu.Unlock()
			}()
		}
		wg.Wait()
	}
	t.Logf("least_conn spread of 200 connections over 4 backends: %v", count)
	for _, b := range bs {
		if n := count[b.name]; n < 45 || n > 55 {
			t.Fatalf("least_conn: %v, want 50 ± 5 each", count)
		}
	}
}

// TestPlaceholderAndDynamicUpstreams: an upstream address with a
// placeholder is resolved per connection, and Caddy's dynamic upstream
// sources (a, over the system resolver for localhost) feed the pool.
func TestPlaceholderAndDynamicUpstreams(t *testing.T) {
	b0 := newNamedBackend(t, "b0", "127.0.0.1:0")
	b1 := newNamedBackend(t, "b1", "127.0.0.1:0")
	port := func(a string) string { return a[strings.LastIndex(a, ":")+1:] }
	addr := wstest.StartCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
		websocket /shard 127.0.0.1:{http.request.header.X-Shard}
		websocket /dns {
			dynamic a {
				name localhost
				port %s
				versions ipv4
			}
		}
	}`, port(b1.addr)))
	for _, b := range []*namedBackend{b0, b1, b0} {
		n, _, c := whoAnswers(t, "ws://"+addr+"/shard", http.Header{"X-Shard": {port(b.addr)}}, "")
		c.Close()
		if n != b.name {
			t.Fatalf("X-Shard %s: answered by %s, want %s", port(b.addr), n, b.name)
		}
	}
	if n, _, c := whoAnswers(t, "ws://"+addr+"/dns", nil, ""); n != "b1" {
		t.Fatalf("dynamic a: %s", n)
	} else {
		c.Close()
	}
	// A placeholder that resolves to nothing usable is a 502 with a reason.
	_, res, err := websocket.DefaultDialer.Dial("ws://"+addr+"/shard", nil)
	if err == nil || res.StatusCode != http.StatusBadGateway {
		t.Fatalf("no X-Shard: %v %v", err, res)
	}
}

// TestHealthChecks: an active check (a WebSocket handshake and a Ping
// answered by a Pong) marks a backend that went down unhealthy, the
// selection skips it, and it is used again once it is back; a passive
// check stops dialling an upstream that just failed. Health shows in the
// admin API and the metrics, and changes are logged.
func TestHealthChecks(t *testing.T) {
	b0 := newNamedBackend(t, "b0", "127.0.0.1:0")
	b1 := newNamedBackend(t, "b1", "127.0.0.1:0")
	dead := deadAddr(t)
	addr, admin := wstest.StartCaddyGlobal(t, "\tmetrics", fmt.Sprintf(`http://127.0.0.1:{PORT} {
		websocket /active %[1]s %[2]s {
			health_uri /health
			health_interval 200ms
			health_timeout 1s
		}
		websocket /passive %[3]s %[2]s {
			fail_duration 10s
		}
	}`, b0.addr, b1.addr, dead), true)
	want := func(path, name string, within time.Duration) {
		t.Helper()
		var n string
		for end := time.Now().Add(within); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
			var c *websocket.Conn
			n, _, c = whoAnswers(t, "ws://"+addr+path, nil, "")
			c.Close()
			if n == name {
				return
			}
		}
		t.Fatalf("%s: answered by %s, want %s within %v", path, n, name, within)
	}
	want("/active", "b0", 3*time.Second)
	b0.stop()
	type upView struct {
		Upstream string
		Healthy  bool
		Reason   string `json:"health_reason"`
	}
	healthOf := func(up string) (upView, bool) {
		var ups struct{ Upstreams []upView }
		adminJSON(t, "GET", "http://"+admin+"/websocket/upstreams", &ups)
		for _, u := range ups.Upstreams {
			if u.Upstream == up {
				return u, true
			}
		}
		return upView{}, false
	}
	var v upView
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if u, ok := healthOf(b0.addr); ok && !u.Healthy {
			v = u
			break
		}
	}
	if v.Upstream == "" {
		t.Fatalf("admin view: %s not marked unhealthy within 3s of stopping", b0.addr)
	}
	t.Logf("admin view: %s healthy=%v (%s)", v.Upstream, v.Healthy, v.Reason)
	// Marked down, it is skipped: no dial to it any more.
	dials := len(wstest.LogEntries(t, "websocket backend dial failed"))
	want("/active", "b1", time.Second)
	want("/active", "b1", time.Second)
	if n := len(wstest.LogEntries(t, "websocket backend dial failed")); n != dials {
		t.Fatalf("an upstream marked down was dialled (%d dial failures)", n-dials)
	}
	if m := metrics(t, admin)[fmt.Sprintf(`caddy_websocket_upstream_healthy{upstream=%q}`, b0.addr)]; m != 0 {
		t.Fatalf("upstream_healthy for the stopped backend: %v", m)
	}
	b0.start(t)
	want("/active", "b0", 3*time.Second)
	if e := wstest.LogEntries(t, "websocket upstream unhealthy"); len(e) == 0 {
		t.Fatal("no unhealthy log line")
	} else {
		t.Logf("log: %v", e[0])
	}
	if e := wstest.LogEntries(t, "websocket upstream healthy again"); len(e) == 0 {
		t.Fatal("no recovery log line")
	}

	// Passive: the first connection finds the dead upstream and goes on to
	// b1; the next ones are not sent to it again within fail_duration.
	before := len(wstest.LogEntries(t, "websocket backend dial failed"))
	for range 4 {
		if n, _, c := whoAnswers(t, "ws://"+addr+"/passive", nil, ""); n != "b1" {
			t.Fatalf("passive: %s", n)
		} else {
			c.Close()
		}
	}
	if n := len(wstest.LogEntries(t, "websocket backend dial failed")) - before; n != 1 {
		t.Fatalf("dead upstream dialled %d times, want once", n)
	}
}
