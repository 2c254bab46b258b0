package websocket_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/gorilla/websocket"

	"github.com/caddy-websocket/caddy-websocket/examples/legacychat"
	"github.com/caddy-websocket/caddy-websocket/internal/overhttp"
	"github.com/caddy-websocket/caddy-websocket/internal/wstest"
)

// eventsBackend is a plain HTTP backend of WebSocket-over-HTTP: answer
// gets each request and its events, and returns the status, headers and
// events of the answer. Every request is recorded.
type eventsBackend struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []eventsRequest
}

type eventsRequest struct {
	header http.Header
	events []overhttp.Event
}

func newEventsBackend(t *testing.T, answer func(r *http.Request, in []overhttp.Event, w http.Header) (int, []overhttp.Event)) *eventsBackend {
	t.Helper()
	b := &eventsBackend{}
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		in, err := overhttp.Decode(body, 0)
		if err != nil || r.Method != http.MethodPost || r.Header.Get("Content-Type") != overhttp.ContentType {
			t.Errorf("backend got %s %s %q: %v", r.Method, r.URL, r.Header.Get("Content-Type"), err)
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		for i := range in {
			in[i].Content = bytes.Clone(in[i].Content)
		}
		b.mu.Lock()
		b.reqs = append(b.reqs, eventsRequest{r.Header.Clone(), in})
		b.mu.Unlock()
		status, out := answer(r, in, w.Header())
		if w.Header().Get("Content-Type") == "" {
			w.Header().Set("Content-Type", overhttp.ContentType)
		}
		w.WriteHeader(status)
		var enc []byte
		for _, e := range out {
			enc = overhttp.Append(enc, e)
		}
		w.Write(enc)
	}))
	t.Cleanup(b.Close)
	return b
}

func (b *eventsBackend) requests() []eventsRequest {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]eventsRequest(nil), b.reqs...)
}

// echoEvents answers OPEN with OPEN and echoes TEXT, BINARY and CLOSE.
func echoEvents(_ *http.Request, in []overhttp.Event, _ http.Header) (int, []overhttp.Event) {
	var out []overhttp.Event
	for _, e := range in {
		switch e.Type {
		case overhttp.Open, overhttp.Text, overhttp.Binary, overhttp.Close:
			out = append(out, e)
		}
	}
	return http.StatusOK, out
}

func httpModeCaddy(t *testing.T, backend string, extra string) string {
	t.Helper()
	return wstest.StartCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
		websocket %s {
			mode http
			%s
		}
	}`, backend, extra))
}

func closeCode(err error) (int, string) {
	var ce *websocket.CloseError
	if errors.As(err, &ce) {
		return ce.Code, ce.Text
	}
	return 0, fmt.Sprint(err)
}

// TestHTTPModeOpen: OPEN accepts (the backend's subprotocol and cookie
// reach the client, its Meta and GRIP headers do not) or refuses (its own
// status and body; a CLOSE instead of OPEN is a 403 with the reason).
func TestHTTPModeOpen(t *testing.T) {
	b := newEventsBackend(t, func(r *http.Request, in []overhttp.Event, w http.Header) (int, []overhttp.Event) {
		if in[0].Type != overhttp.Open {
			return echoEvents(r, in, w)
		}
		switch r.URL.Path {
		case "/wrong-protocol":
			w.Set("Sec-WebSocket-Protocol", "not.offered")
			return http.StatusOK, []overhttp.Event{{Type: overhttp.Open}}
		case "/forbidden":
			w.Set("Content-Type", "text/plain")
			return http.StatusForbidden, []overhttp.Event{{Type: "no entry"}}
		case "/closed":
			return http.StatusOK, []overhttp.Event{{Type: overhttp.Close, Content: overhttp.CloseContent(4003, "who are you?")}}
		}
		w.Set("Sec-WebSocket-Protocol", "chat.v2")
		w.Add("Set-Cookie", "room=lobby")
		w.Set("Set-Meta-User", "alice")
		return http.StatusOK, []overhttp.Event{{Type: overhttp.Open}, {Type: overhttp.Text, Content: []byte("welcome")}}
	})
	addr := httpModeCaddy(t, hostOf(b.Server), "")

	hdr := http.Header{"Sec-Websocket-Protocol": {"chat.v1, chat.v2"}, "Meta-User": {"mallory"}, "Connection-Id": {"forged"}}
	c, res, err := websocket.DefaultDialer.Dial("ws://"+addr+"/room?x=1", hdr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := res.Header.Get("Sec-WebSocket-Protocol"); got != "chat.v2" {
		t.Errorf("subprotocol %q", got)
	}
	if got := res.Header.Get("Set-Cookie"); got != "room=lobby" {
		t.Errorf("cookie %q", got)
	}
	for _, k := range []string{"Set-Meta-User", "Content-Type", "Keep-Alive-Interval"} {
		if v := res.Header.Get(k); v != "" {
			t.Errorf("the client's 101 has %s: %s", k, v)
		}
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, msg, err := c.ReadMessage(); err != nil || string(msg) != "welcome" {
		t.Fatalf("the OPEN answer's TEXT: %q, %v", msg, err)
	}
	c.WriteMessage(websocket.TextMessage, []byte("hello"))
	if _, msg, err := c.ReadMessage(); err != nil || string(msg) != "hello" {
		t.Fatalf("echo: %q, %v", msg, err)
	}
	reqs := b.requests()
	if len(reqs) != 2 {
		t.Fatalf("%d requests", len(reqs))
	}
	open, next := reqs[0].header, reqs[1].header
	id := open.Get("Connection-Id")
	if id == "" || id == "forged" || next.Get("Connection-Id") != id {
		t.Errorf("Connection-Id: OPEN %q, next %q", id, next.Get("Connection-Id"))
	}
	if open.Get("Meta-User") != "" || next.Get("Meta-User") != "alice" {
		t.Errorf("Meta-User: OPEN %q (the client's must not pass), next %q (want the backend's alice)", open.Get("Meta-User"), next.Get("Meta-User"))
	}
	if open.Get("X-Forwarded-For") != "127.0.0.1" || open.Get("Sec-Websocket-Key") != "" || open.Get("Upgrade") != "" {
		t.Errorf("OPEN headers: %v", open)
	}

	for _, tc := range []struct{ path, status, body string }{
		{"/forbidden", "403 Forbidden", "no entry"},
		{"/closed", "403 Forbidden", "backend refused the connection with CLOSE 4003: who are you?"},
	} {
		_, res, err := websocket.DefaultDialer.Dial("ws://"+addr+tc.path, nil)
		if err == nil || res == nil {
			t.Fatalf("%s: accepted", tc.path)
		}
		body, _ := io.ReadAll(res.Body)
		if res.Status != tc.status || !strings.Contains(string(body), tc.body) {
			t.Errorf("%s: %s %q, want %s %q", tc.path, res.Status, body, tc.status, tc.body)
		}
	}

	// An OPEN the backend accepted but the gateway cannot use (a
	// subprotocol the client did not offer): the client gets 502, the
	// backend a DISCONNECT for that Connection-Id, so it forgets it.
	before := len(b.requests())
	_, res, err = websocket.DefaultDialer.Dial("ws://"+addr+"/wrong-protocol", http.Header{"Sec-Websocket-Protocol": {"chat.v1"}})
	if err == nil || res == nil || res.StatusCode != http.StatusBadGateway {
		t.Fatalf("/wrong-protocol: %v %v, want 502", res, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(b.requests()) < before+2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	reqs = b.requests()[before:]
	if len(reqs) != 2 || reqs[1].events[0].Type != overhttp.Disconnect ||
		reqs[1].header.Get("Connection-Id") != reqs[0].header.Get("Connection-Id") {
		t.Fatalf("after the unusable OPEN answer, the backend got %+v", reqs)
	}
}

// TestHTTPModeRoundTrips: text and binary of 0 B to 1 MiB come back intact,
// and 300 messages sent without waiting come back in order, batched into
// fewer requests than messages while one is in flight.
func TestHTTPModeRoundTrips(t *testing.T) {
	b := newEventsBackend(t, func(r *http.Request, in []overhttp.Event, w http.Header) (int, []overhttp.Event) {
		time.Sleep(5 * time.Millisecond) // a request in flight for a while: the next ones batch
		return echoEvents(r, in, w)
	})
	addr := httpModeCaddy(t, hostOf(b.Server), "max_message_size 2MiB")
	c := dialWS(t, "ws://"+addr+"/")
	roundTrips(t, c, "mode http", 0, 1, 125, 126, 65535, 65536, 1<<20)
	before := len(b.requests())
	const n = 300
	go func() {
		for i := range n {
			c.WriteMessage(websocket.TextMessage, []byte(fmt.Sprint("m", i)))
		}
	}()
	for i := range n {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, got, err := c.ReadMessage()
		if err != nil || string(got) != fmt.Sprint("m", i) {
			t.Fatalf("message %d: %q, %v", i, got, err)
		}
	}
	reqs := len(b.requests()) - before
	if reqs >= n {
		t.Fatalf("%d messages took %d requests: not batched", n, reqs)
	}
	t.Logf("%d pipelined messages in order, in %d requests", n, reqs)
}

// TestHTTPModeFlowControl: a backend that takes only whole lines says so
// with Content-Bytes-Accepted (Pushpin's flow control); the rest of a line
// comes back to it, marked with Content-Bytes-Replayed, in front of the
// client's next message, and it answers each line once it is whole.
func TestHTTPModeFlowControl(t *testing.T) {
	b := newEventsBackend(t, func(r *http.Request, in []overhttp.Event, w http.Header) (int, []overhttp.Event) {
		if len(in) == 1 && in[0].Type == overhttp.Open {
			return http.StatusOK, in
		}
		var text string
		for _, e := range in {
			if e.Type == overhttp.Text {
				text += string(e.Content)
			}
		}
		whole := strings.LastIndexByte(text, '\n') + 1
		w.Set("Content-Bytes-Accepted", fmt.Sprint(whole))
		var out []overhttp.Event
		for _, line := range strings.Split(text[:whole], "\n") {
			if line != "" {
				out = append(out, overhttp.Event{Type: overhttp.Text, Content: []byte("line: " + line)})
			}
		}
		return http.StatusOK, out
	})
	addr := httpModeCaddy(t, hostOf(b.Server), "")
	c := dialWS(t, "ws://"+addr+"/")
	for _, part := range []string{"hel", "lo\nwor", "ld\n"} {
		if err := c.WriteMessage(websocket.TextMessage, []byte(part)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond) // one request each
	}
	for _, want := range []string{"line: hello", "line: world"} {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, got, err := c.ReadMessage(); err != nil || string(got) != want {
			t.Fatalf("got %q %v, want %q", got, err, want)
		}
	}
	var replayed []string
	for _, r := range b.requests()[1:] {
		replayed = append(replayed, r.header.Get("Content-Bytes-Replayed"))
	}
	if strings.Join(replayed, ",") != ",3,3" {
		t.Fatalf("Content-Bytes-Replayed of the message requests: %q, want \"\", 3, 3", replayed)
	}
}

// TestHTTPModeUnixSocket: a WebSocket-over-HTTP backend on a unix socket
// (unix//path, as for the other modes), kept-alive requests included.
func TestHTTPModeUnixSocket(t *testing.T) {
	b := newEventsBackend(t, echoEvents)
	sock := t.TempDir() + "/events.sock"
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: b.Server.Config.Handler}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	addr := httpModeCaddy(t, "unix/"+sock, "")
	c := dialWS(t, "ws://"+addr+"/room?x=1")
	roundTrips(t, c, "mode http over a unix socket", 0, 5, 70000)
	reqs := b.requests()
	if len(reqs) < 4 || reqs[0].header.Get("Connection-Id") == "" {
		t.Fatalf("backend saw %d requests", len(reqs))
	}
}

// TestHTTPModeClose: the client's Close reaches the backend as CLOSE with
// its code; the backend's CLOSE reaches the client with its code; a client
// that vanishes is a DISCONNECT.
func TestHTTPModeClose(t *testing.T) {
	b := newEventsBackend(t, func(r *http.Request, in []overhttp.Event, w http.Header) (int, []overhttp.Event) {
		for _, e := range in {
			if e.Type == overhttp.Text && string(e.Content) == "bye" {
				return http.StatusOK, []overhttp.Event{{Type: overhttp.Close, Content: overhttp.CloseContent(4002, "see you")}}
			}
		}
		return echoEvents(r, in, w)
	})
	addr := httpModeCaddy(t, hostOf(b.Server), "")
	last := func(id string) overhttp.Event {
		for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
			reqs := b.requests()
			for i := len(reqs) - 1; i >= 0; i-- {
				r := reqs[i]
				if r.header.Get("Connection-Id") != id || len(r.events) == 0 {
					continue
				}
				if e := r.events[len(r.events)-1]; e.Type == overhttp.Close || e.Type == overhttp.Disconnect {
					return e
				}
			}
		}
		t.Fatalf("no CLOSE or DISCONNECT for %s", id)
		return overhttp.Event{}
	}
	idOf := func() string { r := b.requests(); return r[len(r)-1].header.Get("Connection-Id") }

	// Client closes.
	c := dialWS(t, "ws://"+addr+"/")
	id := idOf()
	c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(4001, "done"), time.Now().Add(time.Second))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if code, _ := closeCode(func() error { _, _, err := c.ReadMessage(); return err }()); code != 4001 {
		t.Errorf("client's close echoed with %d", code)
	}
	if e := last(id); e.Type != overhttp.Close || !bytes.Equal(e.Content, overhttp.CloseContent(4001, "done")) {
		t.Errorf("backend got %s %q, want CLOSE 4001 done", e.Type, e.Content)
	}

	// Backend closes.
	c = dialWS(t, "ws://"+addr+"/")
	id = idOf()
	c.WriteMessage(websocket.TextMessage, []byte("bye"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _, err := c.ReadMessage()
	if code, reason := closeCode(err); code != 4002 || reason != "see you" {
		t.Errorf("backend's CLOSE reached the client as %d %q", code, reason)
	}
	if e := last(id); e.Type != overhttp.Close {
		t.Errorf("the client's answer to the backend's CLOSE: %s", e.Type)
	}

	// Client vanishes.
	c = dialWS(t, "ws://"+addr+"/")
	id = idOf()
	c.NetConn().Close()
	if e := last(id); e.Type != overhttp.Disconnect {
		t.Errorf("a vanished client: backend got %s, want DISCONNECT", e.Type)
	}
}

// TestHTTPModeBackendFails: a backend error, a timeout and an unreachable
// backend each close the client with 1011 and the reason, and are logged.
func TestHTTPModeBackendFails(t *testing.T) {
	var broken *httptest.Server
	b := newEventsBackend(t, func(r *http.Request, in []overhttp.Event, w http.Header) (int, []overhttp.Event) {
		for _, e := range in {
			switch string(e.Content) {
			case "500":
				return http.StatusInternalServerError, nil
			case "slow":
				time.Sleep(1500 * time.Millisecond)
			}
		}
		return echoEvents(r, in, w)
	})
	addr := httpModeCaddy(t, hostOf(b.Server), "request_timeout 500ms")
	for _, tc := range []struct{ send, reason string }{
		{"500", "backend answered 500 Internal Server Error"},
		{"slow", "backend did not answer within 500ms"},
	} {
		c := dialWS(t, "ws://"+addr+"/")
		c.WriteMessage(websocket.TextMessage, []byte(tc.send))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, _, err := c.ReadMessage()
		if code, reason := closeCode(err); code != 1011 || reason != tc.reason {
			t.Errorf("%s: client got %d %q, want 1011 %q", tc.send, code, reason, tc.reason)
		}
	}

	// A backend that goes away after OPEN.
	broken = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", overhttp.ContentType)
		w.Write(overhttp.Append(nil, overhttp.Event{Type: overhttp.Open}))
	}))
	addr2 := httpModeCaddy(t, hostOf(broken), "")
	c := dialWS(t, "ws://"+addr2+"/")
	broken.CloseClientConnections()
	broken.Close()
	c.WriteMessage(websocket.TextMessage, []byte("anyone?"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _, err := c.ReadMessage()
	if code, reason := closeCode(err); code != 1011 || !strings.HasPrefix(reason, "backend unreachable: ") {
		t.Errorf("unreachable backend: client got %d %q", code, reason)
	}
	if n := len(wstest.LogEntries(t, "websocket backend request failed")); n < 1 {
		t.Errorf("%d log entries for the failures", n)
	}

	// Unreachable at OPEN: a 502 with the reason.
	_, res, err := websocket.DefaultDialer.Dial("ws://"+addr2+"/", nil)
	if err == nil || res == nil || res.StatusCode != http.StatusBadGateway {
		t.Fatalf("OPEN to a dead backend: %v %v", res, err)
	}
	body, _ := io.ReadAll(res.Body)
	if !strings.Contains(string(body), "backend unreachable: connection refused") {
		t.Errorf("OPEN to a dead backend: %q", body)
	}
}

// TestHTTPModeChatInBrowser: the example chat as an HTTP-only backend
// (examples/legacychat HTTPRoom) behind mode http, with the room a channel
// of the push API: two Chromium members chat, stay silent for 6 s, and
// chat again.
func TestHTTPModeChatInBrowser(t *testing.T) {
	browser := chromium(t)
	room := &legacychat.HTTPRoom{}
	chat := httptest.NewServer(room)
	defer chat.Close()
	addr, admin := wstest.StartCaddyAdmin(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
		websocket /ws %[1]s {
			mode http
			client {
				keepalive 1s
			}
		}
		reverse_proxy %[1]s
	}`, hostOf(chat)))
	room.Publish = "http://" + admin + "/websocket/channels/room/messages"
	url := "http://" + addr + "/"
	alice := member(t, browser, url, "alice")
	bob := member(t, browser, url, "bob")
	if err := say(alice, "hello over HTTP"); err != nil {
		t.Fatal(err)
	}
	for _, tab := range []context.Context{alice, bob} {
		if err := chromedp.Do(tab, waitText("#log", "alice: hello over HTTP", 5*time.Second)); err != nil {
			t.Fatalf("broadcast: %v", err)
		}
	}
	time.Sleep(6 * time.Second)
	if err := say(bob, "still here"); err != nil {
		t.Fatalf("bob after 6s: %v (status %q)", err, text(t, bob, "#status"))
	}
	if err := chromedp.Do(alice, waitText("#log", "bob: still here", 5*time.Second)); err != nil {
		t.Fatalf("alice after 6s: %v (status %q)", err, text(t, alice, "#status"))
	}
	t.Logf("mode http: alice %q, bob %q", text(t, alice, "#status"), text(t, bob, "#status"))
}

// TestHTTPModeActiveHealthChecks: with mode http the active check is an
// OPEN (marked X-Websocket-Health-Check: 1, on health_uri) that must be
// accepted, then a DISCONNECT; a backend that refuses it is skipped until
// it accepts again.
func TestHTTPModeActiveHealthChecks(t *testing.T) {
	var sick atomic.Bool
	named := func(name string, sickness *atomic.Bool) *eventsBackend {
		return newEventsBackend(t, func(r *http.Request, in []overhttp.Event, w http.Header) (int, []overhttp.Event) {
			if in[0].Type != overhttp.Open {
				return http.StatusOK, nil
			}
			if sickness != nil && sickness.Load() {
				return http.StatusServiceUnavailable, nil
			}
			return http.StatusOK, []overhttp.Event{{Type: overhttp.Open}, {Type: overhttp.Text, Content: []byte(name)}}
		})
	}
	b0, b1 := named("b0", &sick), named("b1", nil)
	addr := httpModeCaddy(t, hostOf(b0.Server)+" "+hostOf(b1.Server), `lb_policy first
			health_uri /health
			health_interval 200ms
			health_timeout 1s`)
	who := func() string {
		c, res, err := websocket.DefaultDialer.Dial("ws://"+addr+"/", nil)
		if err != nil {
			if res != nil {
				return res.Status
			}
			return err.Error()
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, m, err := c.ReadMessage()
		if err != nil {
			return err.Error()
		}
		return string(m)
	}
	eventually := func(want string) {
		t.Helper()
		var got string
		for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
			if got = who(); got == want {
				return
			}
		}
		t.Fatalf("answered by %q, want %q", got, want)
	}
	eventually("b0")
	sick.Store(true)
	eventually("b1")
	if e := wstest.LogEntries(t, "websocket upstream unhealthy"); len(e) == 0 || e[0]["error"] != "OPEN refused: status 503" {
		t.Fatalf("unhealthy log lines: %v", e)
	}
	sick.Store(false)
	eventually("b0")

	// The checks themselves: an OPEN on /health, marked, then a
	// DISCONNECT of the same Connection-Id. The switches above can all
	// happen within one interval: wait for three checks of b1 first.
	countChecks := func() (n int) {
		for _, r := range b1.requests() {
			if r.header.Get("X-Websocket-Health-Check") == "1" && r.events[0].Type == overhttp.Open {
				n++
			}
		}
		return n
	}
	for end := time.Now().Add(3 * time.Second); countChecks() < 3 && time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
	}
	var checks int
	reqs := b1.requests()
	for i, r := range reqs {
		if r.header.Get("X-Websocket-Health-Check") != "1" || r.events[0].Type != overhttp.Open {
			continue
		}
		checks++
		id := r.header.Get("Connection-Id")
		var hungUp bool
		for _, later := range reqs[i+1:] {
			if later.header.Get("Connection-Id") == id && later.events[0].Type == overhttp.Disconnect {
				hungUp = true
			}
		}
		if !hungUp && i < len(reqs)-2 {
			t.Fatalf("health check %s was not followed by a DISCONNECT", id)
		}
	}
	if checks < 3 {
		t.Fatalf("%d health checks of b1 seen", checks)
	}
}
