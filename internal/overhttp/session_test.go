package overhttp

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
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
