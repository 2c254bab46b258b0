package websocket_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/gorilla/websocket"

	"github.com/caddy-websocket/caddy-websocket/internal/brokertest"
	"github.com/caddy-websocket/caddy-websocket/internal/wstest"
)

// busView is the bus as GET /websocket/channels shows it.
type busView struct {
	Channels map[string]int `json:"channels"`
	Bus      *struct {
		Broker  string `json:"broker"`
		Up      bool   `json:"up"`
		Error   string `json:"error"`
		Topics  int    `json:"topics"`
		Pending int    `json:"pending"`
	} `json:"bus"`
}

// fleetMember is one built Caddy of the fleet, with its clients.
type fleetMember struct {
	admin   string
	log     string
	clients []*websocket.Conn
}

// settledFleet waits until every member's bus is up with all its
// subscriptions confirmed, and its channel has all its subscribers.
func settledFleet(t *testing.T, members []*fleetMember, channel string, subscribers int) {
	t.Helper()
	for _, m := range members {
		var v busView
		for end := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			v = busView{}
			adminJSON(t, "GET", "http://"+m.admin+"/websocket/channels", &v)
			// Topics: the channel, and one per connection (pushes by id).
			if v.Bus != nil && v.Bus.Up && v.Bus.Pending == 0 && v.Channels[channel] == subscribers && v.Bus.Topics == subscribers+1 {
				break
			}
			if time.Now().After(end) {
				t.Fatalf("instance %s never settled: %+v %+v", m.admin, v.Channels, v.Bus)
			}
		}
	}
}

// readSeq has every client of every member read want, in order; a
// message delivered twice, or out of order, shows as the wrong one.
func readSeq(t *testing.T, members []*fleetMember, want []string) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for mi, m := range members {
		for ci, c := range m.clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i, w := range want {
					c.SetReadDeadline(time.Now().Add(10 * time.Second))
					_, msg, err := c.ReadMessage()
					if err != nil || string(msg) != w {
						errs <- fmt.Errorf("instance %d client %d, message %d: %q %v, want %q", mi, ci, i, msg, err, w)
						return
					}
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}
}

func postBody(t *testing.T, url, body string) (int, string) {
	t.Helper()
	res, err := http.Post(url, "text/plain", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

// TestFleetBus: three built Caddy instances share a broker (Redis, NATS)
// through the global option; a backend subscribes each connection to a
// room (Grip-Channel on its 101); 20 clients per instance. 50 publishes
// alternating between the instances' admin endpoints reach every client
// once and in order; a push to a connection another instance holds
// reaches it, to no connection is a 404; with the broker killed every
// instance answers publishes 503 and logs the loss once; after the broker
// restarts they resubscribe on their own and 10 more publishes reach
// everyone, once.
func TestFleetBus(t *testing.T) {
	for _, k := range []struct {
		name  string
		start func(testing.TB) *brokertest.Server
	}{{"redis", brokertest.Redis}, {"nats", brokertest.NATS}} {
		t.Run(k.name, func(t *testing.T) {
			testFleetBus(t, k.start(t), k.name)
		})
	}
}

func testFleetBus(t *testing.T, broker *brokertest.Server, kind string) {
	bin := buildCaddy(t)
	backend := wstest.NewBackend(t, func(r *http.Request) string {
		return wstest.Switch(r, "Grip-Channel: room")
	}, wstest.Drain(time.Minute))
	const perInstance = 20
	var members []*fleetMember
	for i := range 3 {
		port, admin := wstest.FreePort(t), wstest.FreePort(t)
		m := &fleetMember{admin: fmt.Sprintf("127.0.0.1:%d", admin)}
		m.log = instance(t, bin, fmt.Sprintf("%s-instance%d", kind, i), fmt.Sprintf(`{
	admin 127.0.0.1:%d
	persist_config off
	auto_https off
	websocket {
		bus %s {
			prefix test%d
		}
	}
}
http://127.0.0.1:%d {
	websocket %s {
		mode terminate
	}
}
`, admin, broker.URL, os.Getpid(), port, backend.Addr))
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		waitListening(t, addr)
		for range perInstance {
			m.clients = append(m.clients, dialWS(t, "ws://"+addr+"/"))
		}
		members = append(members, m)
	}
	settledFleet(t, members, "room", perInstance)

	var want []string
	for i := range 50 {
		m := members[i%3]
		msg := fmt.Sprintf("m%d", i)
		want = append(want, msg)
		url, body := "http://"+m.admin+"/websocket/channels/room/messages", msg
		if i == 49 {
			// The last one in Pushpin's format, as GRIP libraries send it.
			url, body = "http://"+m.admin+"/websocket/publish/", fmt.Sprintf(`{"items":[{"channel":"room","formats":{"ws-message":{"content":%q}}}]}`, msg)
		}
		st, body := postBody(t, url, body)
		type result struct {
			Bus       bool
			Instances *int
		}
		var res result
		json.Unmarshal([]byte(body), &res)
		if i == 49 {
			var items struct{ Items []result } // Pushpin's answer: one per item
			json.Unmarshal([]byte(body), &items)
			if len(items.Items) == 1 {
				res = items.Items[0]
			}
		}
		if st != 200 || !res.Bus {
			t.Fatalf("publish %d on instance %d: %d %s", i, i%3, st, body)
		}
		if kind == "redis" && (res.Instances == nil || *res.Instances != 3) {
			t.Fatalf("publish %d reached %v instances, want 3: %s", i, res.Instances, body)
		}
	}
	readSeq(t, members, want)
	t.Logf("%s: 50 publishes alternating over 3 instances reached all %d clients once, in order", kind, 3*perInstance)

	// A push to a connection instance 2 holds, sent to instance 0.
	var list connList
	adminJSON(t, "GET", "http://"+members[2].admin+"/websocket/connections", &list)
	if len(list.Connections) != perInstance {
		t.Fatalf("instance 2 lists %d connections", len(list.Connections))
	}
	var target *websocket.Conn
	var targetID string
	for _, c := range members[2].clients {
		for _, v := range list.Connections {
			if v.Client == c.LocalAddr().String() {
				target, targetID = c, v.ID
			}
		}
	}
	if target == nil {
		t.Fatalf("no client of instance 2 in %+v", list.Connections)
	}
	if st, body := postBody(t, "http://"+members[0].admin+"/websocket/connections/"+targetID+"/messages", "just for you"); st != 200 || !strings.Contains(body, `"via": "bus"`) {
		t.Fatalf("push through the bus: %d %s", st, body)
	}
	target.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, msg, err := target.ReadMessage(); err != nil || string(msg) != "just for you" {
		t.Fatalf("pushed message: %q %v", msg, err)
	}
	if st, body := postBody(t, "http://"+members[0].admin+"/websocket/connections/0000000000000000/messages", "x"); st != 404 {
		t.Fatalf("push to no connection: %d %s", st, body)
	}

	// The broker goes down.
	broker.Stop()
	for _, m := range members {
		for end := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			var v busView
			adminJSON(t, "GET", "http://"+m.admin+"/websocket/channels", &v)
			if v.Bus != nil && !v.Bus.Up {
				break
			}
			if time.Now().After(end) {
				t.Fatalf("instance %s still reports the bus up", m.admin)
			}
		}
		st, body := postBody(t, "http://"+m.admin+"/websocket/channels/room/messages", "lost")
		if st != http.StatusServiceUnavailable || !strings.Contains(body, "unreachable") {
			t.Fatalf("publish with the broker down: %d %s", st, body)
		}
		t.Logf("publish during the outage: %d %s", st, strings.TrimSpace(body))
	}
	time.Sleep(time.Second) // a few failed reconnects, which must not be logged each
	broker.Start()
	settledFleet(t, members, "room", perInstance)

	want = want[:0]
	for i := range 10 {
		msg := fmt.Sprintf("r%d", i)
		want = append(want, msg)
		if st, body := postBody(t, "http://"+members[i%3].admin+"/websocket/channels/room/messages", msg); st != 200 {
			t.Fatalf("publish %d after the restart: %d %s", i, st, body)
		}
	}
	readSeq(t, members, want)

	// Nothing more: no message was delivered twice, none of the outage's.
	for _, c := range members[1].clients[:3] {
		c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if _, msg, err := c.ReadMessage(); err == nil {
			t.Fatalf("an extra message: %q", msg)
		}
	}
	// A Pushpin close action through one instance closes every client of
	// the room, on every instance, with its code.
	if st, body := postBody(t, "http://"+members[1].admin+"/websocket/publish/", `{"items":[{"channel":"room","formats":{"ws-message":{"action":"close","code":4001,"reason":"room closed"}}}]}`); st != 200 {
		t.Fatalf("close action: %d %s", st, body)
	}
	for mi, m := range members {
		for ci, c := range m.clients {
			if mi == 1 && ci < 3 {
				continue // their read timed out above: gorilla is done with them
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, _, err := c.ReadMessage()
			if ce, ok := err.(*websocket.CloseError); !ok || ce.Code != 4001 || ce.Text != "room closed" {
				t.Fatalf("instance %d client %d: %v, want Close 4001", mi, ci, err)
			}
		}
	}
	// With every client gone, no instance keeps a subscription on the
	// broker: not the channel's, not the connections'.
	for _, m := range members {
		var v busView
		for end := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			v = busView{}
			adminJSON(t, "GET", "http://"+m.admin+"/websocket/channels", &v)
			if v.Bus != nil && v.Bus.Topics == 0 && len(v.Channels) == 0 {
				break
			}
			if time.Now().After(end) {
				t.Fatalf("instance %s still subscribed: %+v %+v", m.admin, v.Channels, v.Bus)
			}
		}
	}
	if kind == "redis" {
		_, body := postBody(t, "http://"+members[0].admin+"/websocket/channels/room/messages", "to nobody")
		if !strings.Contains(body, `"instances": 0`) {
			t.Errorf("a publish after everyone left: %s, want 0 instances", body)
		}
	}
	for _, m := range members {
		b, _ := os.ReadFile(m.log)
		if n := strings.Count(string(b), "websocket bus unreachable"); n != 1 {
			t.Errorf("instance %s logged the loss %d times, want once", m.admin, n)
		}
		if n := strings.Count(string(b), "websocket bus connected"); n != 2 {
			t.Errorf("instance %s logged %d connections, want 2 (start, recovery)", m.admin, n)
		}
	}
	metrics := getText(t, "http://"+members[0].admin+"/metrics")
	// Instance 0 delivered 60 messages and a Close to each of its 20.
	for _, want := range []string{"caddy_websocket_bus_up 1", `caddy_websocket_bus_messages_total{direction="published"}`, `caddy_websocket_bus_deliveries_total{result="delivered"} 1220`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

func getText(t *testing.T, url string) string {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return string(b)
}

// TestBusAcrossReloads: a reload that names the same broker keeps the
// bus's connection and its subscriptions (the live client still gets each
// publish once); one that changes the broker's prefix moves the
// subscriptions to the new bus and never delivers twice; one without a
// bus publishes to this instance's subscribers directly.
func TestBusAcrossReloads(t *testing.T) {
	redis := brokertest.Redis(t)
	backend := wstest.NewBackend(t, func(r *http.Request) string {
		return wstest.Switch(r, "Grip-Channel: room")
	}, wstest.Drain(time.Minute))
	port, admin := wstest.FreePort(t), fmt.Sprintf("127.0.0.1:%d", wstest.FreePort(t))
	logFile := t.TempDir() + "/caddy.log"
	config := func(bus, header string) string {
		return fmt.Sprintf(`{
	admin %s
	persist_config off
	auto_https off
	log {
		output file %s
	}
	%s
}
http://127.0.0.1:%d {
	header X-Config %s
	websocket %s {
		mode terminate
	}
}
`, admin, logFile, bus, port, header, backend.Addr)
	}
	withBus := func(prefix string) string {
		return fmt.Sprintf("websocket {\n\t\tbus %s {\n\t\t\tprefix %s\n\t\t}\n\t}", redis.URL, prefix)
	}
	wstest.LoadCaddyfile(t, config(withBus("one"), "a"))
	t.Cleanup(func() { caddy.Stop() })
	c := dialWS(t, fmt.Sprintf("ws://127.0.0.1:%d/", port))
	m := []*fleetMember{{admin: admin, clients: []*websocket.Conn{c}}}
	settledFleet(t, m, "room", 1)

	publish := func(msg string, viaBus bool) {
		t.Helper()
		st, body := postBody(t, "http://"+admin+"/websocket/channels/room/messages", msg)
		if st != 200 || strings.Contains(body, `"bus": true`) != viaBus {
			t.Fatalf("publish %q: %d %s (want through the bus: %v)", msg, st, body, viaBus)
		}
	}
	publish("before", true)
	readSeq(t, m, []string{"before"})

	wstest.LoadCaddyfile(t, config(withBus("one"), "b")) // same broker
	settledFleet(t, m, "room", 1)
	publish("same broker", true)
	readSeq(t, m, []string{"same broker"})
	if n := strings.Count(readFile(t, logFile), "websocket bus connected"); n != 1 {
		t.Errorf("the bus connected %d times across a reload to the same broker, want once", n)
	}

	wstest.LoadCaddyfile(t, config(withBus("two"), "c")) // another bus
	settledFleet(t, m, "room", 1)
	publish("new broker", true)
	readSeq(t, m, []string{"new broker"})

	wstest.LoadCaddyfile(t, config("", "d")) // none
	publish("no bus", false)
	readSeq(t, m, []string{"no bus"})
	c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, msg, err := c.ReadMessage(); err == nil {
		t.Fatalf("delivered twice: %q", msg)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
