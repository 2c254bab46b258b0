package websocket_test

import (
	"errors"
	"flag"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/caddy-websocket/caddy-websocket/internal/wstest"
)

var soak = flag.Bool("soak", false, "run the long soak test (4,000 connections for a minute)")

// TestSoak holds many connections through both modes with traffic and
// keepalives, reloads the config under them, then closes everything, and
// checks: no unexpected close, no message lost or reordered (sequence
// numbers), relay goroutines, sockets and heap back to baseline. The
// default is a short variant for CI; -soak runs the long one.
func TestSoak(t *testing.T) {
	wstest.NoLeaks(t)
	n, dur := 200, 4*time.Second
	if *soak {
		n, dur = 4000, time.Minute // 4 sockets each in this one process: the fd limit
	}
	runtime.GC()
	var m0 runtime.MemStats
	runtime.ReadMemStats(&m0)

	echo := echoBackend(t)
	sites := `http://127.0.0.1:{PORT} {
		handle /t {
			websocket ` + hostOf(echo) + ` {
				client {
					keepalive %[1]s
				}
				backend {
					keepalive %[1]s
				}
			}
		}
		handle /m {
			websocket ` + hostOf(echo) + ` {
				mode terminate
				client {
					keepalive %[1]s
				}
				backend {
					keepalive %[1]s
				}
			}
		}
	}`
	addr := wstest.StartCaddy(t, fmt.Sprintf(sites, "300ms"))
	conns := make([]*websocket.Conn, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 50)
	for i := range conns {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			path := "/t"
			if i%2 == 1 {
				path = "/m"
			}
			c, _, err := websocket.DefaultDialer.Dial("ws://"+addr+path, nil)
			if err != nil {
				t.Errorf("connection %d: %v", i, err)
				return
			}
			conns[i] = c
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	t.Cleanup(func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	})

	var sent, checked atomic.Int64
	errs := make(chan error, n)
	stop := time.Now().Add(dur)
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := 0; time.Now().Before(stop); seq++ {
				msg := fmt.Sprintf("%d:%d", i, seq)
				if err := c.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
					errs <- fmt.Errorf("connection %d, message %d: %v", i, seq, err)
					return
				}
				sent.Add(1)
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				_, got, err := c.ReadMessage()
				if err != nil || string(got) != msg {
					errs <- fmt.Errorf("connection %d, message %d: got %q, %v", i, seq, got, err)
					return
				}
				checked.Add(1)
				time.Sleep(time.Duration(50+i%100) * time.Millisecond)
			}
		}()
	}
	port := strings.TrimPrefix(addr, "127.0.0.1:")
	for i, ka := range []string{"250ms", "400ms", "300ms"} {
		time.Sleep(dur / 4)
		wstest.LoadCaddyfile(t, "{\n\tadmin off\n\tpersist_config off\n\tauto_https off\n\tdefault_bind 127.0.0.1\n}\n"+
			strings.ReplaceAll(fmt.Sprintf(sites, ka), "{PORT}", port))
		t.Logf("reload %d (keepalive %s) under %d connections", i+1, ka, n)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	// Close every connection cleanly: each must get its Close back.
	for i, c := range conns {
		c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, "done"), time.Now().Add(time.Second))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, _, err := c.ReadMessage()
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != 1000 {
			t.Errorf("connection %d closing: %v", i, err)
		}
	}
	t.Logf("%d connections, %d messages sent, %d checked in order, 3 reloads", n, sent.Load(), checked.Load())
	if sent.Load() != checked.Load() {
		t.Errorf("%d messages sent, %d came back", sent.Load(), checked.Load())
	}

	// Heap back near where it started once the connections are gone (the
	// test's own client connections included: drop them too).
	for i, c := range conns {
		c.Close()
		conns[i] = nil
	}
	var m1 runtime.MemStats
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		runtime.GC()
		runtime.ReadMemStats(&m1)
		if m1.HeapInuse < m0.HeapInuse+32<<20 || time.Now().After(end) {
			break
		}
	}
	t.Logf("heap in use: %d MiB before, %d MiB after", m0.HeapInuse>>20, m1.HeapInuse>>20)
	if m1.HeapInuse > m0.HeapInuse+32<<20 {
		t.Errorf("heap did not come back: %d MiB before, %d MiB after", m0.HeapInuse>>20, m1.HeapInuse>>20)
	}
}
