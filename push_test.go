package websocket_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/caddy-websocket/caddy-websocket/internal/overhttp"
	"github.com/caddy-websocket/caddy-websocket/internal/wstest"
)

func post(t *testing.T, url, contentType, body string) (int, string) {
	t.Helper()
	res, err := http.Post(url, contentType, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

func onlyConnection(t *testing.T, admin, mode string) string {
	t.Helper()
	// The client has its 101 a moment before the hub lists the connection.
	var list connList
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		adminJSON(t, "GET", "http://"+admin+"/websocket/connections", &list)
		for _, c := range list.Connections {
			if c.Mode == mode {
				return c.ID
			}
		}
	}
	t.Fatalf("no %s connection in %+v", mode, list)
	return ""
}

// TestPushToConnection: a message pushed through the admin API reaches a
// terminated client (text and binary), between its backend's messages; a
// tunnel refuses with 409 and says why.
func TestPushToConnection(t *testing.T) {
	echo := echoBackend(t)
	addr, admin := wstest.StartCaddyGlobal(t, "", fmt.Sprintf(`http://127.0.0.1:{PORT} {
		websocket /terminate %[1]s {
			mode terminate
		}
		websocket /tunnel %[1]s
		websocket_status /ws-status/*
	}`, hostOf(echo)), true)
	c := dialWS(t, "ws://"+addr+"/terminate")
	id := onlyConnection(t, admin, "terminate")
	base := "http://" + admin + "/websocket/connections/" + id + "/messages"
	if st, body := post(t, base, "text/plain", "from the server"); st != 200 {
		t.Fatalf("push: %d %s", st, body)
	}
	if st, body := post(t, base+"?type=binary", "", "\x00\x01"); st != 200 {
		t.Fatalf("push binary: %d %s", st, body)
	}
	if st, body := post(t, base, "text/plain", "\xff"); st != 400 || !strings.Contains(body, "UTF-8") {
		t.Fatalf("invalid text: %d %s", st, body)
	}
	// The same route below websocket_status, on the site.
	if st, body := post(t, "http://"+addr+"/ws-status/connections/"+id+"/messages", "text/plain", "from the site"); st != 200 {
		t.Fatalf("push through websocket_status: %d %s", st, body)
	}
	c.WriteMessage(websocket.TextMessage, []byte("echo me"))
	want := []struct {
		typ int
		msg string
	}{{websocket.TextMessage, "from the server"}, {websocket.BinaryMessage, "\x00\x01"}, {websocket.TextMessage, "from the site"}, {websocket.TextMessage, "echo me"}}
	for _, w := range want {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		typ, msg, err := c.ReadMessage()
		if err != nil || typ != w.typ || string(msg) != w.msg {
			t.Fatalf("got %d %q %v, want %d %q", typ, msg, err, w.typ, w.msg)
		}
	}

	dialWS(t, "ws://"+addr+"/tunnel")
	tid := onlyConnection(t, admin, "tunnel")
	st, body := post(t, "http://"+admin+"/websocket/connections/"+tid+"/messages", "text/plain", "x")
	if st != http.StatusConflict || !strings.Contains(body, "tunnel mode") {
		t.Fatalf("push to a tunnel: %d %s", st, body)
	}
	if st, _ := post(t, "http://"+admin+"/websocket/connections/nosuch/messages", "text/plain", "x"); st != 404 {
		t.Fatalf("push to no connection: %d", st)
	}
}

// TestPublishToChannel: 200 connections in mode http, subscribed by their
// backend's GRIP control message, and one in terminate mode subscribed by
// its backend's Grip-Channel header, each get every message published to
// the channel once and in order, through the channel API and Pushpin's
// publish format; a publish with action close ends them with its code.
func TestPublishToChannel(t *testing.T) {
	b := newEventsBackend(t, func(r *http.Request, in []overhttp.Event, w http.Header) (int, []overhttp.Event) {
		var out []overhttp.Event
		for _, e := range in {
			switch e.Type {
			case overhttp.Open:
				w.Set("Sec-WebSocket-Extensions", "grip")
				out = append(out, e, overhttp.Event{Type: overhttp.Text, Content: []byte(`c:{"type":"subscribe","channel":"news"}`)},
					overhttp.Event{Type: overhttp.Text, Content: []byte("dropped: no m: prefix")},
					overhttp.Event{Type: overhttp.Text, Content: []byte("m:subscribed")})
			case overhttp.Close:
				out = append(out, e)
			}
		}
		return http.StatusOK, out
	})
	gripWS := wstest.NewBackend(t, func(r *http.Request) string {
		return wstest.Switch(r, "Grip-Channel: news; prev-id=1, sports")
	}, wstest.Drain(time.Minute))
	addr, admin := wstest.StartCaddyGlobal(t, "", fmt.Sprintf(`http://127.0.0.1:{PORT} {
		websocket /http %s {
			mode http
		}
		websocket /terminate %s {
			mode terminate
		}
	}`, hostOf(b.Server), gripWS.Addr), true)

	const n = 200
	conns := make([]*websocket.Conn, 0, n+1)
	for range n {
		c := dialWS(t, "ws://"+addr+"/http")
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, msg, err := c.ReadMessage(); err != nil || string(msg) != "subscribed" {
			t.Fatalf("GRIP message: %q %v", msg, err)
		}
		conns = append(conns, c)
	}
	tc, res, err := websocket.DefaultDialer.Dial("ws://"+addr+"/terminate", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tc.Close() })
	if h := res.Header.Get("Grip-Channel"); h != "" {
		t.Errorf("Grip-Channel reached the client: %q", h)
	}
	conns = append(conns, tc)

	var chans struct{ Channels map[string]int }
	for end := time.Now().Add(5 * time.Second); chans.Channels["news"] < n+1 && time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		adminJSON(t, "GET", "http://"+admin+"/websocket/channels", &chans)
	}
	if chans.Channels["news"] != n+1 || chans.Channels["sports"] != 1 {
		t.Fatalf("channels %v", chans.Channels)
	}

	const msgs = 5
	start := time.Now()
	for i := range msgs - 1 {
		st, body := post(t, "http://"+admin+"/websocket/channels/news/messages", "text/plain", fmt.Sprint("news ", i))
		var res struct{ Subscribers, Queued int }
		json.Unmarshal([]byte(body), &res)
		if st != 200 || res.Subscribers != n+1 || res.Queued != n+1 {
			t.Fatalf("publish: %d %s", st, body)
		}
	}
	// The last one in Pushpin's format, as a GRIP library sends it.
	pub := fmt.Sprintf(`{"items":[{"channel":"news","formats":{"ws-message":{"content":"news %d"}}}]}`, msgs-1)
	if st, body := post(t, "http://"+admin+"/websocket/publish/", "application/json", pub); st != 200 {
		t.Fatalf("Pushpin publish: %d %s", st, body)
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(conns))
	var mu sync.Mutex
	var lastAt time.Time
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range msgs {
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				_, msg, err := c.ReadMessage()
				if err != nil || string(msg) != fmt.Sprint("news ", i) {
					errs <- fmt.Errorf("message %d: %q %v", i, msg, err)
					return
				}
			}
			mu.Lock()
			if now := time.Now(); now.After(lastAt) {
				lastAt = now
			}
			mu.Unlock()
			if c == tc {
				return // its read must not time out: it is read again below
			}
			// Nothing more: delivered once. (A gorilla connection whose
			// read timed out is done for.)
			c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			if _, msg, err := c.ReadMessage(); err == nil {
				errs <- fmt.Errorf("extra message %q", msg)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("%d messages to %d subscribers: all in order, once, the last %v after the first publish", msgs, len(conns), lastAt.Sub(start).Round(time.Millisecond))

	// Pushpin's close action.
	pub = `{"items":[{"channel":"sports","formats":{"ws-message":{"action":"close","code":4005}}}]}`
	st, body := post(t, "http://"+admin+"/websocket/publish/", "application/json", pub)
	if st != 200 {
		t.Fatalf("Pushpin close: %d %s", st, body)
	}
	t.Logf("close: %s", body)
	tc.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _, err = tc.ReadMessage()
	if code, _ := closeCode(err); code != 4005 {
		t.Fatalf("close by publish: %v", err)
	}
	if st, body := post(t, "http://"+admin+"/websocket/publish/", "application/json", `{"items":[{"channel":"x","formats":{"http-stream":{}}}]}`); st != 400 {
		t.Fatalf("unsupported format: %d %s", st, body)
	}
}
