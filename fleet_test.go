package websocket_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/caddy-websocket/caddy-websocket/internal/wstest"
)

// haproxy runs Debian's HAProxy with cfg until the test ends, or skips the
// test outside CI when it is not installed (CI installs it).
func haproxy(t *testing.T, cfg string) {
	t.Helper()
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("haproxy is not installed (apt-get install -y haproxy)")
		}
		t.Skip("haproxy is not installed")
	}
	path := filepath.Join(t.TempDir(), "haproxy.cfg")
	os.WriteFile(path, []byte(cfg), 0o644)
	if out, err := exec.Command(bin, "-c", "-f", path).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "-db", "-f", path)
	logf, _ := os.Create(filepath.Join(t.TempDir(), "haproxy.log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
}

// TestFleetDrainBehindHAProxy is the scale-out setup of docs/FLEET.md: two
// Caddy processes behind HAProxy in mode tcp, which passes the client's
// address with the PROXY protocol into Caddy's proxy_protocol listener
// wrapper. 300 clients, from 50 loopback addresses, reconnect whenever
// they are closed. Instance 1 is stopped with a 3 s drain_window: every
// client it held gets 1001 (none 1006), the reconnects spread over the
// window (at most a third of all clients in any second), all 300 end up on
// instance 2, and instance 2's log has the clients' addresses, not
// HAProxy's.
func TestFleetDrainBehindHAProxy(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	bin := buildCaddy(t)
	echo := echoBackend(t)
	cf := func(port, admin int) string {
		return fmt.Sprintf(`{
	admin 127.0.0.1:%d
	persist_config off
	auto_https off
	storage file_system %s
	servers {
		listener_wrappers {
			proxy_protocol {
				timeout 2s
				allow 127.0.0.1/32
			}
		}
	}
}
http://127.0.0.1:%d {
	websocket %s {
		drain_window 3s
	}
}
`, admin, t.TempDir(), port, hostOf(echo))
	}
	p1, a1, p2, a2, hp := wstest.FreePort(t), wstest.FreePort(t), wstest.FreePort(t), wstest.FreePort(t), wstest.FreePort(t)
	log1 := instance(t, bin, "instance1", cf(p1, a1))
	log2 := instance(t, bin, "instance2", cf(p2, a2))
	waitLog(t, log1, "serving initial configuration", 30*time.Second)
	waitLog(t, log2, "serving initial configuration", 30*time.Second)
	haproxy(t, fmt.Sprintf(`global
	maxconn 4000
defaults
	mode tcp
	timeout connect 2s
	timeout client 1m
	timeout server 1m
	retries 3
	option redispatch 1
frontend ws
	bind 127.0.0.1:%d
	default_backend caddy
backend caddy
	balance roundrobin
	server caddy1 127.0.0.1:%d send-proxy check check-send-proxy inter 200ms fall 1 rise 2
	server caddy2 127.0.0.1:%d send-proxy check check-send-proxy inter 200ms fall 1 rise 2
`, hp, p1, p2))
	front := fmt.Sprintf("ws://127.0.0.1:%d/", hp)
	waitListening(t, fmt.Sprintf("127.0.0.1:%d", hp))

	const n = 300
	type closed struct {
		at   time.Time
		code int
	}
	var mu sync.Mutex
	var closes []closed
	var reconnects []time.Time
	done := make(chan struct{})
	var wg sync.WaitGroup
	connected := make(chan struct{}, n)
	for i := range n {
		ip := net.IPv4(127, 0, 0, byte(2+i%50))
		d := websocket.Dialer{HandshakeTimeout: 5 * time.Second,
			NetDial: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}, Timeout: 5 * time.Second}).Dial}
		wg.Add(1)
		go func() {
			defer wg.Done()
			first := true
			for {
				c, _, err := d.Dial(front, nil)
				if err != nil {
					select {
					case <-done:
						return
					case <-time.After(100 * time.Millisecond):
						continue
					}
				}
				if first {
					connected <- struct{}{}
					first = false
				} else {
					mu.Lock()
					reconnects = append(reconnects, time.Now())
					mu.Unlock()
				}
				go func() { <-done; c.Close() }()
				_, _, err = c.ReadMessage()
				select {
				case <-done:
					return
				default:
				}
				code := 1006
				var ce *websocket.CloseError
				if errors.As(err, &ce) {
					code = ce.Code
				}
				mu.Lock()
				closes = append(closes, closed{time.Now(), code})
				mu.Unlock()
				c.Close()
			}
		}()
	}
	defer func() { close(done); wg.Wait() }()
	for range n {
		select {
		case <-connected:
		case <-time.After(30 * time.Second):
			t.Fatal("not all clients connected")
		}
	}
	total := func(admin int) int {
		var list struct{ Total int }
		adminJSON(t, "GET", fmt.Sprintf("http://127.0.0.1:%d/websocket/connections?limit=1", admin), &list)
		return list.Total
	}
	on1, on2 := total(a1), total(a2)
	t.Logf("before the stop: instance 1 holds %d, instance 2 holds %d", on1, on2)
	if on1+on2 != n || on1 == 0 {
		t.Fatalf("before the stop: %d + %d connections", on1, on2)
	}

	stopAt := time.Now()
	res, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/stop", a1), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	for end := time.Now().Add(15 * time.Second); total(a2) < n; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("instance 2 holds %d of %d after 15 s", total(a2), n)
		}
	}
	settled := time.Since(stopAt)
	time.Sleep(500 * time.Millisecond)

	mu.Lock()
	codes := map[int]int{}
	for _, c := range closes {
		codes[c.code]++
	}
	var rec []time.Duration
	for _, r := range reconnects {
		rec = append(rec, r.Sub(stopAt))
	}
	mu.Unlock()
	sort.Slice(rec, func(i, j int) bool { return rec[i] < rec[j] })
	perSecond := map[int]int{}
	for _, d := range rec {
		perSecond[int(d/time.Second)]++
	}
	maxIn := 0
	for i := range rec {
		j := i
		for j < len(rec) && rec[j]-rec[i] < time.Second {
			j++
		}
		maxIn = max(maxIn, j-i)
	}
	var seconds []string
	for s := 0; s <= int(settled/time.Second); s++ {
		seconds = append(seconds, fmt.Sprintf("%d–%ds: %d", s, s+1, perSecond[s]))
	}
	t.Logf("stop of instance 1: %d closes %v, %d reconnects, all %d on instance 2 after %v", len(closes), codes, len(rec), n, settled.Round(time.Millisecond))
	t.Logf("reconnects per second after the stop: %s; at most %d in any 1 s", strings.Join(seconds, ", "), maxIn)
	if codes[1006] > 0 || codes[1001] != on1 {
		t.Errorf("close codes %v: want %d × 1001 and no 1006", codes, on1)
	}
	if len(rec) != on1 {
		t.Errorf("%d reconnects, want the %d clients of instance 1", len(rec), on1)
	}
	if maxIn > n/3+n/30 {
		t.Errorf("%d reconnects within one second (more than ~a third of %d)", maxIn, n)
	}

	// The clients' own addresses reached instance 2, through HAProxy.
	b, _ := os.ReadFile(log2)
	remotes := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.Contains(line, `"websocket connected"`) {
			continue
		}
		var e struct{ Remote string }
		json.Unmarshal([]byte(line), &e)
		host, _, _ := net.SplitHostPort(e.Remote)
		remotes[host] = true
	}
	if remotes["127.0.0.1"] || len(remotes) != 50 {
		t.Errorf("instance 2 logged connections from %d addresses (HAProxy's own among them: %v)", len(remotes), remotes["127.0.0.1"])
	}
	t.Logf("instance 2 logged %d client addresses (127.0.0.2–127.0.0.51), none of HAProxy's", len(remotes))
}
