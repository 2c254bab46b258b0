package overhttp

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/caddy-websocket/caddy-websocket/internal/frame"
)

// recorder is the client side as the session sees it.
type recorder struct {
	got chan string
}

func (r *recorder) Deliver(op frame.Opcode, p []byte) { r.got <- string(p) }
func (r *recorder) FlushClient()                      {}
func (r *recorder) BackendEnded(byPeer bool, code frame.StatusCode, reason string) {
	r.got <- "ended: " + reason
}

// TestKeepAliveInterval: a backend that sets Keep-Alive-Interval gets an
// empty request that often when nothing else goes, and the events it
// answers with reach the client: its way of speaking first without a push
// API.
func TestKeepAliveInterval(t *testing.T) {
	var mu sync.Mutex
	var bodies []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		bodies = append(bodies, string(b))
		n := len(bodies)
		mu.Unlock()
		w.Header().Set("Content-Type", ContentType)
		w.Header().Set("Keep-Alive-Interval", "1")
		if n == 1 {
			w.Write(Append(nil, Event{Type: Open}))
			return
		}
		w.Write(Append(nil, Event{Type: Text, Content: []byte("poll answered")}))
	}))
	defer srv.Close()
	s, _, _, err := Connect(context.Background(), Config{Client: srv.Client(), URL: srv.URL, ID: "c1", MinKeepAlive: time.Millisecond})
	if err != nil || s == nil {
		t.Fatalf("connect: %v", err)
	}
	rec := &recorder{got: make(chan string, 10)}
	start := time.Now()
	s.Start(rec)
	select {
	case got := <-rec.got:
		if got != "poll answered" {
			t.Fatalf("client got %q", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no keep-alive request within 5s")
	}
	el := time.Since(start)
	mu.Lock()
	defer mu.Unlock()
	if bodies[1] != "" || el < 900*time.Millisecond {
		t.Fatalf("keep-alive request %q after %v, want an empty one after ~1s", bodies[1], el)
	}
	s.Close(frame.CloseNormal, "")
}

// flowBackend is a WebSocket-over-HTTP backend whose answers to message
// requests say how much content it accepted; it records each request's
// events and Content-Bytes-Replayed.
type flowBackend struct {
	mu       sync.Mutex
	requests [][]Event
	replayed []string
	accept   func(events []Event) (accepted string, answer []Event)
}

func (b *flowBackend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	events, err := Decode(body, 0)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", ContentType)
	if len(events) == 1 && events[0].Type == Open {
		w.Write(Append(nil, Event{Type: Open}))
		return
	}
	b.mu.Lock()
	b.requests = append(b.requests, events)
	b.replayed = append(b.replayed, r.Header.Get("Content-Bytes-Replayed"))
	b.mu.Unlock()
	accepted, answer := b.accept(events)
	if accepted != "" {
		w.Header().Set("Content-Bytes-Accepted", accepted)
	}
	var out []byte
	for _, e := range answer {
		out = Append(out, e)
	}
	w.Write(out)
}

func (b *flowBackend) seen() (reqs []string, replayed []string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, evs := range b.requests {
		var s string
		for _, e := range evs {
			s += "[" + string(e.Content) + "]"
		}
		reqs = append(reqs, s)
	}
	return reqs, append([]string(nil), b.replayed...)
}

func contentOf(events []Event) (n int, joined string) {
	for _, e := range events {
		if e.Type == Text || e.Type == Binary {
			n += len(e.Content)
			joined += string(e.Content)
		}
	}
	return n, joined
}

func startFlow(t *testing.T, b *flowBackend, maxPending int) (*Session, *recorder) {
	t.Helper()
	srv := httptest.NewServer(b)
	t.Cleanup(srv.Close)
	s, _, _, err := Connect(context.Background(), Config{Client: srv.Client(), URL: srv.URL, ID: "c1", MaxPending: maxPending})
	if err != nil || s == nil {
		t.Fatalf("connect: %v", err)
	}
	rec := &recorder{got: make(chan string, 10)}
	s.Start(rec)
	t.Cleanup(func() { s.Close(frame.CloseNormal, "") })
	return s, rec
}

func expectDelivered(t *testing.T, rec *recorder, want string) {
	t.Helper()
	select {
	case got := <-rec.got:
		if got != want {
			t.Fatalf("client got %q, want %q", got, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("client got nothing, want %q", want)
	}
}

// A backend that accepts nothing until it has a whole record (here: 10
// bytes) gets what it kept back again, with Content-Bytes-Replayed, once
// there is more; it is not asked again before that.
func TestContentBytesAcceptedWaitsForMore(t *testing.T) {
	b := &flowBackend{accept: func(events []Event) (string, []Event) {
		n, joined := contentOf(events)
		if n < 10 {
			return "0", nil
		}
		return strconv.Itoa(n), []Event{{Type: Text, Content: []byte("record " + joined)}}
	}}
	s, rec := startFlow(t, b, 0)
	s.Send(frame.OpText, []byte("abc"))
	s.Flush()
	time.Sleep(300 * time.Millisecond) // its answer (nothing accepted) comes back
	if reqs, _ := b.seen(); len(reqs) != 1 {
		t.Fatalf("requests after the first message: %q", reqs)
	}
	s.Send(frame.OpText, []byte("defghijk"))
	s.Flush()
	expectDelivered(t, rec, "record abcdefghijk")
	reqs, replayed := b.seen()
	if len(reqs) != 2 || reqs[1] != "[abc][defghijk]" || replayed[0] != "" || replayed[1] != "3" {
		t.Fatalf("requests %q, Content-Bytes-Replayed %q", reqs, replayed)
	}
}

// Acceptance that ends inside a message keeps its tail, sent first next
// time.
func TestContentBytesAcceptedSplitsAMessage(t *testing.T) {
	b := &flowBackend{accept: func(events []Event) (string, []Event) {
		n, _ := contentOf(events)
		return strconv.Itoa(min(n, 3)), nil
	}}
	s, _ := startFlow(t, b, 0)
	s.Send(frame.OpText, []byte("hello"))
	s.Flush()
	time.Sleep(300 * time.Millisecond)
	s.Send(frame.OpBinary, []byte("!"))
	s.Flush()
	time.Sleep(300 * time.Millisecond)
	reqs, replayed := b.seen()
	want := []string{"[hello]", "[lo][!]"}
	if len(reqs) != 2 || reqs[0] != want[0] || reqs[1] != want[1] || replayed[1] != "2" {
		t.Fatalf("requests %q (want %q), Content-Bytes-Replayed %q", reqs, want, replayed)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.requests[1][1].Type != Binary || b.requests[1][0].Type != Text {
		t.Fatalf("event types after the split: %v %v", b.requests[1][0].Type, b.requests[1][1].Type)
	}
}

// A count above what was sent, or keeping back the pending limit (no new
// message could ever come), ends the client with 1011 and the reason.
func TestContentBytesAcceptedErrors(t *testing.T) {
	over := &flowBackend{accept: func([]Event) (string, []Event) { return "9", nil }}
	s, rec := startFlow(t, over, 0)
	s.Send(frame.OpText, []byte("hello"))
	s.Flush()
	expectDelivered(t, rec, "ended: backend's Content-Bytes-Accepted 9 is more than the 5 bytes sent")

	none := &flowBackend{accept: func([]Event) (string, []Event) { return "0", nil }}
	s, rec = startFlow(t, none, 8)
	s.Send(frame.OpText, []byte("12345678"))
	s.Flush()
	expectDelivered(t, rec, "ended: backend kept back 8 bytes with Content-Bytes-Accepted, the pending limit")
}
