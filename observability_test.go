package websocket_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/gorilla/websocket"

	"github.com/caddy-websocket/caddy-websocket/internal/wstest"
)

// metrics scrapes Caddy's /metrics and returns the caddy_websocket_ samples.
func metrics(t *testing.T, admin string) map[string]float64 {
	t.Helper()
	res, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "caddy_websocket_") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		var v float64
		fmt.Sscan(line[i+1:], &v)
		out[line[:i]] = v
	}
	return out
}

func adminJSON(t *testing.T, method, url string, v any) int {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if v != nil {
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("%s %s: %v\n%s", method, url, err, b)
		}
	}
	return res.StatusCode
}

type connList struct {
	Total       int `json:"total"`
	Connections []struct {
		ID        string `json:"id"`
		Mode      string `json:"mode"`
		Route     string `json:"route"`
		Client    string `json:"client"`
		Upstream  string `json:"upstream"`
		ClientLeg struct {
			Messages  int64    `json:"messages"`
			Bytes     int64    `json:"bytes"`
			NextEvent string   `json:"next_event"`
			NextIn    *float64 `json:"next_event_in_seconds"`
		} `json:"client_leg"`
		BackendLeg struct {
			Messages int64 `json:"messages"`
		} `json:"backend_leg"`
		Reconnects int `json:"reconnects"`
	} `json:"connections"`
	Next string `json:"next"`
}

// TestObservability scripts refusals of each kind, connections, a
// reconnect and an admin DELETE, then checks the metrics and the admin API
// for exact values.
func TestObservability(t *testing.T) {
	echo := echoBackend(t)
	chat := startChat(t, "")
	dead := fmt.Sprintf("127.0.0.1:%d", wstest.FreePort(t))
	notFound := wstest.NewBackend(t, func(*http.Request) string {
		return "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
	}, nil)
	addr, admin := wstest.StartCaddyAdmin(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
		handle /echo {
			websocket %s {
				client {
					keepalive 30s
				}
			}
		}
		handle /ws {
			websocket %s {
				mode terminate
				backend {
					on_close reconnect
				}
			}
		}
		handle /dead {
			websocket %s
		}
		handle /404 {
			websocket %s
		}
	}`, hostOf(echo), chat.addr, dead, notFound.Addr))
	before := metrics(t, admin)

	key := wstest.Key()
	good := func(path string, extra ...string) string { return wstest.UpgradeRequest(addr, path, key, extra...) }
	refusals := map[string]string{
		"method":       strings.Replace(good("/echo"), "GET", "POST", 1),
		"http_version": strings.Replace(good("/echo"), "HTTP/1.1", "HTTP/1.0", 1),
		"upgrade":      strings.Replace(good("/echo"), "Upgrade: websocket\r\n", "", 1),
		"connection":   strings.Replace(good("/echo"), "Connection: Upgrade", "Connection: close", 1),
		"version":      strings.Replace(good("/echo"), "Version: 13", "Version: 8", 1),
		"key":          strings.Replace(good("/echo"), key, "short", 1),
		"body":         good("/echo", "Content-Length: 2") + "hi",
		"origin":       good("/echo", "Origin: https://evil.example"),
	}
	for _, req := range refusals {
		if p, _ := wstest.Dial(t, addr, req); p != nil {
			t.Fatal("upgraded")
		}
	}
	wstest.Dial(t, addr, good("/dead"))
	wstest.Dial(t, addr, good("/404"))

	e1 := dialWS(t, "ws://"+addr+"/echo")
	e2 := dialWS(t, "ws://"+addr+"/echo")
	term := dialWS(t, "ws://"+addr+"/ws")
	for i := 0; i < 3; i++ {
		e1.WriteMessage(websocket.TextMessage, []byte("hello"))
		if _, _, err := e1.ReadMessage(); err != nil {
			t.Fatal(err)
		}
	}

	// A connection is registered a moment after its client got the 101.
	var list connList
	for end := time.Now().Add(2 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		list = connList{}
		st := adminJSON(t, "GET", "http://"+admin+"/websocket/connections", &list)
		if st == 200 && list.Total == 3 {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("GET connections: %d, total %d", st, list.Total)
		}
	}
	var e1ID string
	for _, c := range list.Connections {
		if c.Route == "/echo" && c.ClientLeg.Messages == 3 {
			e1ID = c.ID
			if c.BackendLeg.Messages != 3 || c.ClientLeg.Bytes != 3*(6+5) || c.Mode != "tunnel" || c.ClientLeg.NextEvent != "ping" ||
				c.ClientLeg.NextIn == nil || *c.ClientLeg.NextIn < 25 || *c.ClientLeg.NextIn > 30 {
				t.Fatalf("echo connection: %+v", c)
			}
		}
	}
	if e1ID == "" {
		t.Fatalf("the echo connection with 3 messages is not listed: %+v", list)
	}
	// Pagination: one at a time, in id order, ends.
	var page connList
	seen := 0
	for after := ""; ; after = page.Next {
		page = connList{}
		adminJSON(t, "GET", "http://"+admin+"/websocket/connections?limit=1&after="+after, &page)
		seen += len(page.Connections)
		if page.Next == "" {
			break
		}
	}
	if seen != 3 {
		t.Fatalf("paged through %d connections", seen)
	}

	// DELETE closes cleanly with the code and reason asked for.
	if st := adminJSON(t, "DELETE", "http://"+admin+"/websocket/connections/"+e1ID+"?code=4000&reason=bye", nil); st != 200 {
		t.Fatalf("DELETE: %d", st)
	}
	e1.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _, err := e1.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != 4000 || ce.Text != "bye" {
		t.Fatalf("after DELETE: %v", err)
	}
	if st := adminJSON(t, "DELETE", "http://"+admin+"/websocket/connections/nosuchid", nil); st != 404 {
		t.Fatalf("DELETE of an unknown id: %d", st)
	}
	if st := adminJSON(t, "DELETE", "http://"+admin+"/websocket/connections/"+e1ID+"?code=1006", nil); st != 404 && st != 400 {
		t.Fatalf("DELETE with code 1006: %d", st)
	}

	// A backend restart under the terminated connection.
	chat.kill()
	time.Sleep(200 * time.Millisecond)
	startChat(t, chat.addr)
	term.WriteMessage(websocket.TextMessage, []byte("carol:back"))
	term.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, m, err := term.ReadMessage(); err != nil || string(m) != "carol:back" {
		t.Fatalf("after the restart: %q %v", m, err)
	}

	// Wait for the deleted connection's summary, then read the metrics.
	for end := time.Now().Add(8 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if metrics(t, admin)[`caddy_websocket_closes_total{closer="gateway",code="4xxx"}`] > before[`caddy_websocket_closes_total{closer="gateway",code="4xxx"}`] {
			break
		}
	}
	after := metrics(t, admin)
	delta := func(name string) float64 { return after[name] - before[name] }
	want := map[string]float64{
		`caddy_websocket_upgrades_total{proto="h1",result="accepted"}`:            3,
		`caddy_websocket_upgrades_total{proto="h1",result="backend_refused"}`:     1,
		`caddy_websocket_upgrades_total{proto="h1",result="backend_unreachable"}`: 1,
		`caddy_websocket_closes_total{closer="gateway",code="4xxx"}`:              1,
		`caddy_websocket_reconnects_total`:                                        1,
		`caddy_websocket_messages_total{from="client"}`:                           4,
		`caddy_websocket_messages_total{from="backend"}`:                          4,
	}
	for reason := range refusals {
		want[fmt.Sprintf(`caddy_websocket_upgrades_total{proto="h1",result=%q}`, reason)] = 1
	}
	for name, v := range want {
		if got := delta(name); got != v {
			t.Errorf("%s: %v, want %v", name, got, v)
		}
	}
	open := fmt.Sprintf(`caddy_websocket_connections_open{mode="tunnel",proto="h1",upstream=%q}`, hostOf(echo))
	if after[open] != 1 {
		t.Errorf("%s = %v, want 1", open, after[open])
	}
	if t.Failed() {
		for k, v := range after {
			t.Logf("%s %v", k, v)
		}
	}
	_ = e2
}

// TestAdminPage renders the live page (websocket_status on a site route) in
// headless Chromium; the screenshot goes to the test's temp directory (or
// SCREENSHOT_DIR if set).
func TestAdminPage(t *testing.T) {
	browser := chromium(t)
	echo := echoBackend(t)
	addr, admin := wstest.StartCaddyAdmin(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
		handle /ws-status/* {
			websocket_status
		}
		websocket %s
	}`, hostOf(echo)))
	// The same JSON on the admin endpoint and on the site route.
	var viaAdmin, viaSite connList
	for i := 0; i < 3; i++ {
		c := dialWS(t, "ws://"+addr+"/chat")
		c.WriteMessage(websocket.TextMessage, []byte("hi"))
		c.ReadMessage()
	}
	adminJSON(t, "GET", "http://"+admin+"/websocket/connections", &viaAdmin)
	adminJSON(t, "GET", "http://"+addr+"/ws-status/connections", &viaSite)
	if viaAdmin.Total != 3 || viaSite.Total != 3 {
		t.Fatalf("admin lists %d, site lists %d", viaAdmin.Total, viaSite.Total)
	}
	tab, cancel := chromedp.NewContext(browser)
	defer cancel()
	if err := chromedp.Do(tab,
		chromedp.Navigate("http://"+addr+"/ws-status/"),
		waitText("#count", "3", 5*time.Second),
		waitText("#rows", "/chat", 5*time.Second),
	); err != nil {
		html, _ := chromedp.Run(tab, chromedp.Evaluate[string]("document.documentElement.outerHTML.slice(0, 2000)"))
		t.Fatalf("live page: %v\n%s", err, html)
	}
	png, err := chromedp.Run(tab, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	dir := os.Getenv("SCREENSHOT_DIR")
	if dir == "" {
		dir = t.TempDir()
	}
	path := filepath.Join(dir, "admin-page.png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot of the live page: %s (%d bytes)", path, len(png))
}
