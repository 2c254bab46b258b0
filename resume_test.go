package websocket_test

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/caddy-websocket/caddy-websocket/examples/legacychat"
	"github.com/caddy-websocket/caddy-websocket/internal/frame"
	"github.com/caddy-websocket/caddy-websocket/internal/overhttp"
	"github.com/caddy-websocket/caddy-websocket/internal/wstest"
)

// chatMember is a member of the example chat through the gateway: a
// reader answers the gateway's Pings and collects the room's lines.
type chatMember struct {
	name   string
	raw    net.Conn // the TCP connection under it (to reset or blackhole it)
	p      *wstest.Peer
	wmu    sync.Mutex
	cookie string // the resume token the gateway set
	lines  chan string
}

// joinChat opens a WebSocket to the chat at addr (over TLS with secure)
// with the resume cookie given, if any.
func joinChat(t *testing.T, addr string, secure bool, name, cookie string) *chatMember {
	t.Helper()
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	var c net.Conn = raw
	if secure {
		c = tls.Client(raw, &tls.Config{InsecureSkipVerify: true, ServerName: "localhost", NextProtos: []string{"http/1.1"}})
	}
	host := addr
	if secure {
		host = "localhost"
	}
	req := "GET /ws HTTP/1.1\r\nHost: " + host + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + wstest.Key() + "\r\n"
	if cookie != "" {
		req += "Cookie: theme=dark; caddy_ws_resume=" + cookie + "\r\n"
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req+"\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	res, err := http.ReadResponse(br, nil)
	if err != nil || res.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("%s joining: %v %v", name, err, res)
	}
	c.SetDeadline(time.Time{})
	m := &chatMember{name: name, raw: raw, p: &wstest.Peer{Conn: c, R: br, Masked: true}, lines: make(chan string, 100)}
	for _, ck := range res.Cookies() {
		if ck.Name == "caddy_ws_resume" {
			m.cookie = ck.Value
			if !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode || ck.Path != "/ws" || ck.Secure != secure || ck.MaxAge <= 0 {
				t.Errorf("resume cookie %q", res.Header.Get("Set-Cookie"))
			}
		}
	}
	go func() {
		for {
			f, err := m.p.ReadFrame(time.Minute)
			if err != nil {
				close(m.lines)
				return
			}
			switch f.Op {
			case frame.OpPing:
				m.wmu.Lock()
				m.p.WriteFrame(frame.OpPong, f.Payload)
				m.wmu.Unlock()
			case frame.OpText:
				m.lines <- string(f.Payload)
			}
		}
	}()
	return m
}

func (m *chatMember) say(t *testing.T, line string) {
	t.Helper()
	m.wmu.Lock()
	defer m.wmu.Unlock()
	if err := m.p.WriteFrame(frame.OpText, []byte(m.name+":"+line)); err != nil {
		t.Fatalf("%s: %v", m.name, err)
	}
}

// hears waits for the line want, skipping others.
func (m *chatMember) hears(t *testing.T, want string) time.Time {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case l, ok := <-m.lines:
			if !ok {
				t.Fatalf("%s's connection ended waiting for %q", m.name, want)
			}
			if l == want {
				return time.Now()
			}
		case <-timeout:
			t.Fatalf("%s did not hear %q", m.name, want)
		}
	}
}

// hearsExactly reads the next lines and wants exactly these, then nothing
// for a moment.
func (m *chatMember) hearsExactly(t *testing.T, want ...string) time.Time {
	t.Helper()
	var first time.Time
	for i, w := range want {
		select {
		case l := <-m.lines:
			if l != w {
				t.Fatalf("%s heard %q, want %q (line %d of %q)", m.name, l, w, i+1, want)
			}
			if i == 0 {
				first = time.Now()
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s did not hear %q", m.name, w)
		}
	}
	select {
	case l := <-m.lines:
		t.Fatalf("%s heard %q after %q: twice, or out of place", m.name, l, want)
	case <-time.After(300 * time.Millisecond):
	}
	return first
}

// reset ends the member's TCP connection with a reset, as a network change
// does.
func (m *chatMember) reset() {
	m.raw.(*net.TCPConn).SetLinger(0)
	m.raw.Close()
}

// blackhole drops every packet of the member's connection on loopback,
// both ways, as when a phone leaves a network: nobody is told.
func (m *chatMember) blackhole(t *testing.T) {
	t.Helper()
	port := fmt.Sprint(m.raw.LocalAddr().(*net.TCPAddr).Port)
	for _, dir := range []string{"--dport", "--sport"} {
		rule := []string{"INPUT", "-i", "lo", "-p", "tcp", dir, port, "-j", "DROP"}
		if out, err := exec.Command("iptables", append([]string{"-I"}, rule...)...).CombinedOutput(); err != nil {
			t.Fatalf("iptables: %v %s", err, out)
		}
		t.Cleanup(func() { exec.Command("iptables", append([]string{"-D"}, rule...)...).Run() })
	}
}

// room is the example chat with its members' arrivals and departures
// logged, as the legacy servers' access logs did.
type room struct {
	*legacychat.Server
	mu  sync.Mutex
	log []string
}

func newRoom(t *testing.T, idle time.Duration) (*room, string) {
	r := &room{Server: legacychat.New(idle)}
	r.Logf = func(format string, args ...any) {
		r.mu.Lock()
		r.log = append(r.log, fmt.Sprintf(format, args...))
		r.mu.Unlock()
	}
	srv := httptest.NewServer(r.Server)
	t.Cleanup(srv.Close)
	return r, hostOf(srv)
}

// count returns how many log lines contain s.
func (r *room) count(s string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, l := range r.log {
		if strings.Contains(l, s) {
			n++
		}
	}
	return n
}

func (r *room) lines() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.log, "\n")
}

// TestSessionResume: two members of the example chat through a gateway
// with client { on_close resume }, over ws and over wss (a site with an
// access log and metrics). Alice's connection is reset, then (on her new
// connection) blackholed while the gateway still thinks it alive, each
// time while Bob says three lines; each time she comes back at once with
// the cookie the gateway set, gets the three lines once each and in order,
// and the room goes on. The backend logs no departure and no new arrival
// for her. A wrong token is a new session; a member that does not come
// back is let go after the window (the backend then logs the departure);
// more than resume_buffer for an absent member ends its session.
func TestSessionResume(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("blackholing a connection needs iptables as root (CI runs as root)")
	}
	if _, err := exec.LookPath("iptables"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("iptables is not installed")
		}
		t.Skip("iptables is not installed")
	}
	// A room per scheme, so that the ws members' ends (at the end of their
	// subtest) do not show in the wss room's log.
	var rooms []*room
	var roomAddrs []string
	for range 2 {
		r, a := newRoom(t, time.Minute)
		rooms, roomAddrs = append(rooms, r), append(roomAddrs, a)
	}
	small, smallAddr := newRoom(t, time.Minute)
	ca := wstest.NewCA(t)
	route := func(upstream, extra string) string {
		return `
		websocket /ws ` + upstream + ` {
			mode terminate
			client {
				keepalive 300ms
				pong_timeout 5s
				on_close resume
				resume_window 2s
				` + extra + `
			}
		}`
	}
	sites := `http://127.0.0.1:{PORT1} {` + route(roomAddrs[0], "") + `
	}
	https://localhost:{PORT2} {
		tls ` + ca.CertFile + ` ` + ca.KeyFile + `
		log {
			output discard
		}` + route(roomAddrs[1], "") + `
	}
	http://127.0.0.1:{PORT3} {` + route(smallAddr, "resume_buffer 20") + `
	}`
	addrs, admin := wstest.StartCaddyGlobalPortsAdmin(t, "\tskip_install_trust\n\tauto_https disable_redirects\n\tmetrics", sites, 3)

	for i, scheme := range []string{"ws", "wss"} {
		t.Run(scheme, func(t *testing.T) {
			addr, secure, chat := addrs[i], scheme == "wss", rooms[i]
			joins, leaves := chat.count("joined"), chat.count("left")
			alice := joinChat(t, addr, secure, "alice", "")
			alice.say(t, "hello")
			alice.hears(t, "alice:hello")
			bob := joinChat(t, addr, secure, "bob", "")
			bob.say(t, "hello")
			alice.hears(t, "bob:hello")
			bob.hears(t, "bob:hello")
			if alice.cookie == "" {
				t.Fatal("no resume cookie on the 101")
			}

			for _, drop := range []string{"reset", "blackhole"} {
				// What alice read is acknowledged by her TCP within a
				// delayed ACK; a path that dies before the acknowledgement
				// leaves its bytes unacknowledged, and they are sent again.
				time.Sleep(200 * time.Millisecond)
				said := []string{}
				for n := 1; n <= 3; n++ {
					said = append(said, fmt.Sprintf("bob:%s line %d", drop, n))
				}
				if drop == "reset" {
					alice.reset()
					// The admin list shows the session waiting, with the
					// time it has left.
					waiting := 0
					for end := time.Now().Add(5 * time.Second); waiting != 1 && time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
						var list struct {
							Connections []struct {
								Upstream string  `json:"upstream"`
								Detached bool    `json:"detached"`
								Left     float64 `json:"resume_left_seconds"`
							} `json:"connections"`
						}
						adminJSON(t, "GET", "http://"+admin+"/websocket/connections", &list)
						waiting = 0
						for _, c := range list.Connections {
							if c.Upstream == roomAddrs[i] && c.Detached && c.Left > 0 && c.Left <= 2 {
								waiting++
							}
						}
					}
					if waiting != 1 {
						t.Fatal("the admin list shows no detached session")
					}
				} else {
					alice.blackhole(t)
				}
				for _, l := range said {
					bob.say(t, strings.TrimPrefix(l, "bob:"))
					bob.hears(t, l)
				}
				time.Sleep(100 * time.Millisecond) // written into the dead path, or held
				back := time.Now()
				old := alice.cookie
				alice = joinChat(t, addr, secure, "alice", old)
				first := alice.hearsExactly(t, said...)
				t.Logf("%s, %s: alice back; the first missed line %v after her reconnect began", scheme, drop, first.Sub(back).Round(time.Millisecond))
				if alice.cookie == "" || alice.cookie == old {
					t.Fatalf("the resume's 101 set no new token (%q)", alice.cookie)
				}
				alice.say(t, "back after "+drop)
				bob.hears(t, "alice:back after "+drop)
				alice.hears(t, "alice:back after "+drop)
			}
			if j, l := chat.count("joined")-joins, chat.count("left")-leaves; j != 2 || l != 0 {
				t.Fatalf("the backend logged %d arrivals and %d departures, want 2 and 0:\n%s", j, l, chat.lines())
			}

			// A wrong token is an ordinary new connection.
			carol := joinChat(t, addr, secure, "carol", "AAAAAAAAAAAAAAAAAAAAAA")
			carol.say(t, "hi")
			bob.hears(t, "carol:hi")
			if j := chat.count("joined") - joins; j != 3 {
				t.Fatalf("a wrong token: %d arrivals, want 3", j)
			}

			// Alice does not come back: after the window, the backend
			// hears she left.
			alice.reset()
			start := time.Now()
			for chat.count("left")-leaves == 0 {
				if time.Since(start) > 5*time.Second {
					t.Fatalf("the backend was not told after the window:\n%s", chat.lines())
				}
				time.Sleep(20 * time.Millisecond)
			}
			if d := time.Since(start); d < 1500*time.Millisecond {
				t.Fatalf("the backend was told after %v, within the window", d)
			}
		})
	}

	t.Run("resume_buffer", func(t *testing.T) {
		alice := joinChat(t, addrs[2], false, "alice", "")
		bob := joinChat(t, addrs[2], false, "bob", "")
		bob.say(t, "hi")
		alice.hears(t, "bob:hi")
		alice.reset()
		time.Sleep(200 * time.Millisecond)
		bob.say(t, "a line longer than twenty bytes")
		start := time.Now()
		for small.count("left") == 0 {
			if time.Since(start) > 1500*time.Millisecond {
				t.Fatalf("the session did not end when resume_buffer overflowed:\n%s", small.lines())
			}
			time.Sleep(20 * time.Millisecond)
		}
	})

	m := metrics(t, admin)
	if m[`caddy_websocket_resumes_total{event="resumed"}`] != 4 || m[`caddy_websocket_resumes_total{event="detached"}`] < 6 ||
		m[`caddy_websocket_resumes_total{event="expired"}`] < 3 || m[`caddy_websocket_upgrades_total{proto="h1",result="resumed"}`] != 4 {
		t.Errorf("metrics: %v", m)
	}
	for _, e := range wstest.LogEntries(t, "websocket client resumed") {
		if e["replayed"] != 3.0 {
			t.Errorf("resumed log line: %v", e)
		}
	}
	for _, e := range wstest.LogEntries(t, "websocket detached session ended") {
		t.Logf("ended: %v", e)
	}
}

// TestBrowserSessionResume: the chat page in Chromium, set to reconnect
// when its connection drops, as chat clients do. Its path is cut (what
// the gateway sends it is dropped, and its own next packet is answered
// with a reset, so the browser sees the drop when it next speaks, the
// gateway not) while Bob says three lines; the page reconnects with the cookie the gateway set on
// its 101 (the browser's own cookie handling), shows the three lines once
// each and in order, and the backend never saw it leave or join again.
func TestBrowserSessionResume(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("cutting a connection needs iptables as root (CI runs as root)")
	}
	browser := chromium(t)
	chat, chatAddr := newRoom(t, time.Minute)
	addr, admin := wstest.StartCaddyGlobal(t, "\tmetrics", fmt.Sprintf(`http://127.0.0.1:{PORT} {
		log {
			output discard
		}
		websocket /ws %s {
			mode terminate
			client {
				keepalive 300ms
				pong_timeout 5s
				on_close resume
			}
		}
		reverse_proxy %[1]s
	}`, chatAddr), true)
	url := "http://" + addr + "/"
	alice := member(t, browser, url, "alice")
	if err := chromedp.Do(alice, chromedp.Click(chromedp.CSS("#reconnect"))); err != nil {
		t.Fatal(err)
	}
	bob := joinChat(t, addr, false, "bob", "")
	bob.say(t, "hi")
	if err := chromedp.Do(alice, waitText("#log", "bob: hi", 5*time.Second)); err != nil {
		t.Fatal(err)
	}

	// The page's connection is the one that is not Bob's.
	var list struct {
		Connections []struct {
			Client string `json:"client"`
		} `json:"connections"`
	}
	adminJSON(t, "GET", "http://"+admin+"/websocket/connections", &list)
	var port string
	for _, c := range list.Connections {
		if _, p, _ := net.SplitHostPort(c.Client); p != fmt.Sprint(bob.raw.LocalAddr().(*net.TCPAddr).Port) {
			port = p
		}
	}
	if len(list.Connections) != 2 || port == "" {
		t.Fatalf("admin list: %+v", list)
	}
	for _, rule := range [][]string{
		// Not the reset the rule below answers with (it goes to that port).
		{"INPUT", "-i", "lo", "-p", "tcp", "--dport", port, "!", "--tcp-flags", "RST", "RST", "-j", "DROP"},
		{"INPUT", "-i", "lo", "-p", "tcp", "--sport", port, "-j", "REJECT", "--reject-with", "tcp-reset"},
	} {
		if out, err := exec.Command("iptables", append([]string{"-I"}, rule...)...).CombinedOutput(); err != nil {
			t.Fatalf("iptables: %v %s", err, out)
		}
		t.Cleanup(func() { exec.Command("iptables", append([]string{"-D"}, rule...)...).Run() })
	}
	for n := 1; n <= 3; n++ {
		bob.say(t, fmt.Sprintf("line %d", n))
		bob.hears(t, fmt.Sprintf("bob:line %d", n))
	}
	// Headless Chromium has no network to lose: the page finds its path
	// dead when it next sends (its line is lost with the path: a client's
	// to send again).
	time.Sleep(200 * time.Millisecond)
	if err := say(alice, "are you there?"); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(alice, waitText("#log", "connection closed with code 1006", 5*time.Second),
		waitText("#status", "connected as alice", 5*time.Second),
		waitText("#log", "bob: line 3", 5*time.Second)); err != nil {
		t.Fatalf("%v (status %q)", err, text(t, alice, "#status"))
	}
	time.Sleep(300 * time.Millisecond)
	log := text(t, alice, "#log")
	i1, i2, i3 := strings.Index(log, "bob: line 1"), strings.Index(log, "bob: line 2"), strings.Index(log, "bob: line 3")
	if i1 < 0 || i2 < i1 || i3 < i2 || strings.Count(log, "bob: line") != 3 {
		t.Fatalf("the page shows %q, want bob's three lines once each, in order", log)
	}
	t.Logf("the page: %s", log)
	if err := say(alice, "back"); err != nil {
		t.Fatal(err)
	}
	bob.hears(t, "alice:back")
	if j, l := chat.count("joined"), chat.count("left"); j != 2 || l != 0 {
		t.Fatalf("the backend logged %d arrivals and %d departures, want 2 and 0:\n%s", j, l, chat.lines())
	}
	if n := len(wstest.LogEntries(t, "websocket client resumed")); n != 1 {
		t.Fatalf("%d resumes logged, want 1", n)
	}
}

// TestHTTPModeResume: session resume in mode http. The backend holds no
// connection: it sees one OPEN and no DISCONNECT across the member's drop
// and return, every request with the same Connection-Id; a push to the
// member while it is away reaches it when it is back.
func TestHTTPModeResume(t *testing.T) {
	backend := newEventsBackend(t, echoEvents)
	addr, admin := wstest.StartCaddyAdmin(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
		websocket %s {
			mode http
			client {
				on_close resume
				resume_window 5s
			}
		}
	}`, backend.URL))
	alice := joinChat(t, addr, false, "alice", "")
	alice.say(t, "one")
	alice.hears(t, "alice:one")
	var list struct {
		Connections []struct {
			ID       string `json:"id"`
			Detached bool   `json:"detached"`
		} `json:"connections"`
	}
	alice.reset()
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		adminJSON(t, "GET", "http://"+admin+"/websocket/connections", &list)
		if len(list.Connections) == 1 && list.Connections[0].Detached {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("not detached: %+v", list)
		}
	}
	req, _ := http.NewRequest(http.MethodPost, "http://"+admin+"/websocket/connections/"+list.Connections[0].ID+"/messages", strings.NewReader("pushed while away"))
	res, err := http.DefaultClient.Do(req)
	if err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("push to a detached session: %v %v", err, res)
	}
	res.Body.Close()
	alice = joinChat(t, addr, false, "alice", alice.cookie)
	alice.hears(t, "pushed while away")
	alice.say(t, "two")
	alice.hears(t, "alice:two")
	opens, ids := 0, map[string]bool{}
	for _, r := range backend.requests() {
		ids[r.header.Get("Connection-Id")] = true
		for _, e := range r.events {
			switch e.Type {
			case overhttp.Open:
				opens++
			case overhttp.Disconnect, overhttp.Close:
				t.Fatalf("the backend got %v", e.Type)
			}
		}
	}
	if opens != 1 || len(ids) != 1 {
		t.Fatalf("the backend saw %d OPENs and %d connection ids, want 1 and 1", opens, len(ids))
	}
}

// TestResumeTokenStaysOnItsSite: browsers send a host's cookies to every
// port of it; a token from one site, offered on another site's route with
// the same path, is an ordinary new connection there, and the first
// site's session still waits for its client.
func TestResumeTokenStaysOnItsSite(t *testing.T) {
	roomA, addrA := newRoom(t, time.Minute)
	roomB, addrB := newRoom(t, time.Minute)
	site := func(port, upstream string) string {
		return `http://127.0.0.1:{` + port + `} {
		websocket /ws ` + upstream + ` {
			mode terminate
			client {
				on_close resume
			}
		}
	}
	`
	}
	addrs := wstest.StartCaddyPorts(t, site("PORT1", addrA)+site("PORT2", addrB), 2)
	alice := joinChat(t, addrs[0], false, "alice", "")
	alice.say(t, "hi")
	alice.hears(t, "alice:hi")
	time.Sleep(200 * time.Millisecond)
	alice.reset()
	elsewhere := joinChat(t, addrs[1], false, "alice", alice.cookie)
	elsewhere.say(t, "hi B")
	elsewhere.hears(t, "alice:hi B")
	if roomB.count("joined") != 1 || roomA.count("left") != 0 {
		t.Fatalf("site B: %d arrivals (want a new session: 1); site A: %d departures (want 0)", roomB.count("joined"), roomA.count("left"))
	}
}
