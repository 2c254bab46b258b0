package websocket_test

import (
	"errors"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/gorilla/websocket"

	"github.com/caddy-websocket/caddy-websocket/internal/wstest"
)

// TestDrainSpreadsCloses: a Caddy stop closes its 100 connections with
// 1001 spread over drain_window (2 s), not in one burst: at most a third of
// them in any 500 ms, none without a Close frame, and the stop waits for
// the drain.
func TestDrainSpreadsCloses(t *testing.T) {
	echo := echoBackend(t)
	addr := wstest.StartCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
		websocket %s {
			drain_window 2s
		}
	}`, hostOf(echo)))
	const n = 100
	var mu sync.Mutex
	var at []time.Duration
	codes := map[int]int{}
	var wg sync.WaitGroup
	conns := make([]*websocket.Conn, n)
	for i := range conns {
		conns[i] = dialWS(t, "ws://"+addr+"/")
	}
	start := time.Now()
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, _, err := c.ReadMessage()
			mu.Lock()
			defer mu.Unlock()
			at = append(at, time.Since(start))
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				codes[ce.Code]++
			} else {
				codes[-1]++
			}
		}()
	}
	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}
	stopped := time.Since(start)
	wg.Wait()
	if codes[1001] != n {
		t.Fatalf("close codes %v, want %d × 1001", codes, n)
	}
	sort.Slice(at, func(i, j int) bool { return at[i] < at[j] })
	maxIn := 0
	for i := range at {
		j := i
		for j < len(at) && at[j]-at[i] < 500*time.Millisecond {
			j++
		}
		maxIn = max(maxIn, j-i)
	}
	t.Logf("closes from %v to %v; at most %d in any 500 ms; caddy.Stop took %v", at[0].Round(time.Millisecond), at[n-1].Round(time.Millisecond), maxIn, stopped.Round(time.Millisecond))
	if maxIn > n/3 || at[n-1]-at[0] < 1500*time.Millisecond || stopped < 1500*time.Millisecond {
		t.Fatalf("not spread over the 2 s window: %d in 500 ms, first %v last %v", maxIn, at[0], at[n-1])
	}
}
