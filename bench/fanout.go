package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/caddy-websocket/caddy-websocket/internal/upgrade"
)

// The fan-out bench (-fanout): one publish on the push API to every
// subscriber of a channel, subscribers spread over instances. Without a
// bus, one instance holds them all and the publish goes to it; with a
// bus (Redis, NATS), two built Caddy instances hold half each and every
// publish goes to the first one's admin endpoint, so half the deliveries
// cross the broker. Latency is publish (the POST sent) to delivery (a
// client read the message), over every subscriber of every publish; the
// rate is a burst of publishes back to back, deliveries per second until
// the last arrives.

// fanoutSetup is one row of the fan-out table.
type fanoutSetup struct {
	name      string
	instances int
	bus       string // the global option's URL; "" for none
}

// fanoutResult is what one setup measured.
type fanoutResult struct {
	p50, p99, max time.Duration
	perSecond     float64
	burst         int
}

func runFanout(bin, work string, subscribers, publishes, burst int) string {
	backend, err := gripBackend()
	if err != nil {
		log.Fatal(err)
	}
	setups := []fanoutSetup{{name: "no bus, 1 instance", instances: 1}}
	if redis, err := startBroker(work, "redis-server"); err != nil {
		log.Printf("fan-out: no Redis (%v)", err)
	} else {
		defer redis.stop()
		setups = append(setups, fanoutSetup{name: "Redis bus, 2 instances", instances: 2, bus: "redis://" + redis.addr})
	}
	if nats, err := startBroker(work, "nats-server"); err != nil {
		log.Printf("fan-out: no NATS (%v)", err)
	} else {
		defer nats.stop()
		setups = append(setups, fanoutSetup{name: "NATS bus, 2 instances", instances: 2, bus: "nats://" + nats.addr})
	}
	var b strings.Builder
	fmt.Fprintf(&b, "## Fan-out: one publish to %d subscribers\n\n", subscribers)
	fmt.Fprintf(&b, "Terminate mode; the backend subscribes each connection with `Grip-Channel: room`. %d publishes, one at a time, to the first instance's admin endpoint: latency from the POST to each client's read, over all deliveries. Then %d publishes back to back: deliveries per second until the last arrived.\n\n", publishes, burst)
	b.WriteString("| setup | p50 | p99 | max | deliveries/s (burst) |\n|---|---|---|---|---|\n")
	for _, s := range setups {
		log.Printf("fan-out: %s", s.name)
		r, err := fanout(bin, work, backend, s, subscribers, publishes, burst)
		if err != nil {
			log.Printf("  %s: %v", s.name, err)
			fmt.Fprintf(&b, "| %s | failed: %v | | | |\n", s.name, err)
			continue
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %.0f |\n", s.name, ms(r.p50), ms(r.p99), ms(r.max), r.perSecond)
	}
	return b.String()
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }

// gripBackend is a WebSocket backend that subscribes every connection to
// channel room and then only reads.
func gripBackend() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				fmt.Fprintf(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\nGrip-Channel: room\r\n\r\n",
					upgrade.AcceptKey(req.Header.Get("Sec-WebSocket-Key")))
				buf := make([]byte, 512)
				for {
					if _, err := br.Read(buf); err != nil {
						return
					}
				}
			}()
		}
	}()
	return l.Addr().String(), nil
}

// startBroker runs redis-server or nats-server on a free loopback port.
func startBroker(work, name string) (*proc, error) {
	port := freePort()
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	switch name {
	case "redis-server":
		return start(addr, "", name, "--port", fmt.Sprint(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", work)
	default:
		return start(addr, "", name, "-a", "127.0.0.1", "-p", fmt.Sprint(port))
	}
}

func fanout(bin, work, backend string, s fanoutSetup, subscribers, publishes, burst int) (*fanoutResult, error) {
	var admins, addrs []string
	for i := range s.instances {
		port, admin := freePort(), freePort()
		global := ""
		if s.bus != "" {
			global = fmt.Sprintf("\twebsocket {\n\t\tbus %s\n\t}\n", s.bus)
		}
		cf := fmt.Sprintf("{\n\tadmin 127.0.0.1:%d\n\tpersist_config off\n\tauto_https off\n%s}\nhttp://127.0.0.1:%d {\n\twebsocket %s {\n\t\tmode terminate\n\t}\n}\n",
			admin, global, port, backend)
		path := filepath.Join(work, fmt.Sprintf("fanout-%d.Caddyfile", i))
		os.WriteFile(path, []byte(cf), 0o644)
		p, err := start(fmt.Sprintf("127.0.0.1:%d", port), fmt.Sprintf("127.0.0.1:%d", admin), filepath.Join(bin, "caddy"), "run", "--config", path, "--adapter", "caddyfile")
		if err != nil {
			return nil, err
		}
		defer p.stop()
		admins = append(admins, p.admin)
		addrs = append(addrs, p.addr)
	}
	// The clients, spread evenly; each notes when each message arrives.
	type client struct {
		c    *websocket.Conn
		seen []time.Time
	}
	clients := make([]*client, subscribers)
	var got atomic.Int64
	var last atomic.Int64 // unix nanos of the latest delivery
	var wg sync.WaitGroup
	for i := range clients {
		c, _, err := websocket.DefaultDialer.Dial("ws://"+addrs[i%len(addrs)]+"/", nil)
		if err != nil {
			return nil, fmt.Errorf("client %d: %v", i, err)
		}
		cl := &client{c: c, seen: make([]time.Time, 0, publishes+burst)}
		clients[i] = cl
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				if _, _, err := c.ReadMessage(); err != nil {
					return
				}
				now := time.Now()
				cl.seen = append(cl.seen, now)
				got.Add(1)
				last.Store(now.UnixNano())
			}
		}()
	}
	defer func() {
		for _, cl := range clients {
			cl.c.Close()
		}
		wg.Wait()
	}()
	// Every instance lists its share, and with a bus every subscription is
	// confirmed, before the first publish.
	for i, admin := range admins {
		want := subscribers / len(admins)
		if i < subscribers%len(admins) {
			want++
		}
		if err := waitChannel(admin, want, s.bus != ""); err != nil {
			return nil, err
		}
	}
	publish := func() error {
		res, err := http.Post("http://"+admins[0]+"/websocket/channels/room/messages", "text/plain", strings.NewReader("a line of the room's chat"))
		if err != nil {
			return err
		}
		res.Body.Close()
		if res.StatusCode != 200 {
			return fmt.Errorf("publish: %s", res.Status)
		}
		return nil
	}
	waitAll := func(n int64) error {
		for end := time.Now().Add(30 * time.Second); got.Load() < n; time.Sleep(time.Millisecond) {
			if time.Now().After(end) {
				return fmt.Errorf("%d of %d deliveries", got.Load(), n)
			}
		}
		return nil
	}
	sent := make([]time.Time, 0, publishes)
	for i := range publishes {
		sent = append(sent, time.Now())
		if err := publish(); err != nil {
			return nil, err
		}
		if err := waitAll(int64((i + 1) * subscribers)); err != nil {
			return nil, err
		}
	}
	var lat []time.Duration
	for _, cl := range clients {
		for i, at := range cl.seen[:publishes] {
			lat = append(lat, at.Sub(sent[i]))
		}
	}
	slices.Sort(lat)
	r := &fanoutResult{p50: lat[len(lat)/2], p99: lat[len(lat)*99/100], max: lat[len(lat)-1], burst: burst}
	t0 := time.Now()
	for range burst {
		if err := publish(); err != nil {
			return nil, err
		}
	}
	if err := waitAll(int64((publishes + burst) * subscribers)); err != nil {
		return nil, err
	}
	r.perSecond = float64(burst*subscribers) / time.Unix(0, last.Load()).Sub(t0).Seconds()
	return r, nil
}

// waitChannel waits until an instance lists n subscribers of room and,
// with a bus, has every subscription confirmed.
func waitChannel(admin string, n int, bus bool) error {
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		res, err := http.Get("http://" + admin + "/websocket/channels")
		if err != nil {
			continue
		}
		var v struct {
			Channels map[string]int
			Bus      *struct {
				Up      bool
				Pending int
			}
		}
		err = jsonDecode(res, &v)
		if err == nil && v.Channels["room"] == n && (!bus || (v.Bus != nil && v.Bus.Up && v.Bus.Pending == 0)) {
			return nil
		}
	}
	return fmt.Errorf("%s never listed %d subscribers", admin, n)
}

func jsonDecode(res *http.Response, v any) error {
	defer res.Body.Close()
	return json.NewDecoder(res.Body).Decode(v)
}
