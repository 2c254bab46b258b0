package websocket_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/caddy-websocket/caddy-websocket/internal/wstest"
)

// TestQuietConnectionsPark checks the memory design: a connection that is
// quiet holds no goroutine (its legs wait in the shared epoll set), and
// wakes up for the next message, in both modes; also on a site as
// production runs it, with an access log and metrics on, where Caddy
// hands the hijacked connection wrapped.
func TestQuietConnectionsPark(t *testing.T) {
	for _, site := range []string{"plain", "log+metrics"} {
		t.Run(site, func(t *testing.T) { testQuietConnectionsPark(t, site) })
	}
}

func testQuietConnectionsPark(t *testing.T, site string) {
	wstest.NoLeaks(t)
	echo := echoBackend(t)
	global, logDirective := "", ""
	if site == "log+metrics" {
		global, logDirective = "\tmetrics", "log {\n\t\t\toutput discard\n\t\t}"
	}
	addr, _ := wstest.StartCaddyGlobal(t, global, fmt.Sprintf(`http://127.0.0.1:{PORT} {
		%s
		websocket /tunnel %s
		websocket /terminate %s {
			mode terminate
		}
	}`, logDirective, hostOf(echo), hostOf(echo)), false)
	for _, mode := range []string{"tunnel", "terminate"} {
		t.Run(mode, func(t *testing.T) {
			const n = 40
			conns := make([]*websocket.Conn, n)
			roundTrip := func(i int, msg string) {
				t.Helper()
				c := conns[i]
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				if err := c.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
					t.Fatal(err)
				}
				if _, got, err := c.ReadMessage(); err != nil || string(got) != msg {
					t.Fatalf("connection %d: %q, %v", i, got, err)
				}
			}
			for i := range conns {
				conns[i] = dialWS(t, "ws://"+addr+"/"+mode)
				roundTrip(i, fmt.Sprint("hello ", i))
			}
			// Legs park once quiet for ParkAfter (100ms).
			var g int
			for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
				if g = wstest.RelayGoroutines(); g == 0 {
					break
				}
			}
			if g != 0 {
				t.Fatalf("%d relay goroutines for %d quiet connections:\n%s", g, n, wstest.RelayStacks())
			}
			for i := range conns {
				roundTrip(i, fmt.Sprint("again ", i))
			}
			for _, c := range conns {
				c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""), time.Now().Add(time.Second))
				c.Close()
			}
		})
	}
}
