package bus

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/caddy-websocket/caddy-websocket/internal/brokertest"
)

// instance is one gateway's end of the bus in these tests: what its
// broker received, and the state changes it was told.
type instance struct {
	Broker
	mu     sync.Mutex
	got    map[string][]string // topic → payloads, in order
	states []bool
}

func (in *instance) received(topic string) []string {
	in.mu.Lock()
	defer in.mu.Unlock()
	return append([]string(nil), in.got[topic]...)
}

type brokerKind struct {
	name  string
	start func(testing.TB) *brokertest.Server
	open  func(url, prefix string, h Handlers) (Broker, error)
}

var kinds = []brokerKind{
	{"redis", brokertest.Redis, NewRedis},
	{"nats", brokertest.NATS, NewNATS},
}

func open(t *testing.T, k brokerKind, url, prefix string) *instance {
	t.Helper()
	in := &instance{got: map[string][]string{}}
	b, err := k.open(url, prefix, Handlers{
		Receive: func(topic string, p []byte) {
			in.mu.Lock()
			in.got[topic] = append(in.got[topic], string(p))
			in.mu.Unlock()
		},
		State: func(up bool, _ error) {
			in.mu.Lock()
			in.states = append(in.states, up)
			in.mu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	in.Broker = b
	t.Cleanup(func() { b.Close() })
	return in
}

// settled waits until the broker is up with every subscription confirmed.
func settled(t *testing.T, ins ...*instance) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for _, in := range ins {
		for {
			st := in.Status()
			if st.Up && st.Pending == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("broker not settled: %+v", st)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !ok(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// TestBrokers: publishes from two instances, alternating, reach each
// subscribing instance once and in publish order; a topic nobody
// subscribes to reaches nobody; Send reaches the one holder or says none
// does; a prefix keeps another fleet out; an outage fails publishes and is
// reported once, and after the restart every subscription is renewed.
func TestBrokers(t *testing.T) {
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			srv := k.start(t)
			a, b := open(t, k, srv.URL, ""), open(t, k, srv.URL, "")
			other := open(t, k, srv.URL, "otherfleet")
			ctx := context.Background()
			for _, in := range []*instance{a, b, other} {
				in.Subscribe("channel/room.1")
			}
			b.Subscribe("conn/b1")
			a.Subscribe("channel/gone")
			a.Unsubscribe("channel/gone")
			settled(t, a, b, other)

			var want []string
			for i := range 50 {
				from := a
				if i%2 == 1 {
					from = b
				}
				p := fmt.Sprintf("m%d", i)
				want = append(want, p)
				n, err := from.Publish(ctx, "channel/room.1", Message{Kind: Text, Payload: []byte(p)}.Encode())
				if err != nil {
					t.Fatalf("publish %d: %v", i, err)
				}
				if n != -1 && n != 2 {
					t.Fatalf("publish %d reached %d instances, want 2", i, n)
				}
			}
			for name, in := range map[string]*instance{"a": a, "b": b} {
				waitFor(t, name+" to receive 50", func() bool { return len(in.received("channel/room.1")) >= 50 })
				got := in.received("channel/room.1")
				for i := range got {
					m, err := Decode([]byte(got[i]))
					if err != nil || string(m.Payload) != want[i] {
						t.Fatalf("%s: message %d is %q, want %q", name, i, got[i], want[i])
					}
				}
				if len(got) != 50 {
					t.Fatalf("%s received %d, want 50", name, len(got))
				}
			}
			if n, _ := a.Publish(ctx, "channel/gone", []byte{1, 1}); n > 0 {
				t.Errorf("a topic unsubscribed still reaches %d", n)
			}
			if got := other.received("channel/room.1"); len(got) != 0 {
				t.Errorf("another prefix received %d messages", len(got))
			}

			if ok, err := a.Send(ctx, "conn/b1", []byte{1, 1, 'x'}); !ok || err != nil {
				t.Fatalf("send to b's connection: %v %v", ok, err)
			}
			waitFor(t, "b to get the send", func() bool { return len(b.received("conn/b1")) == 1 })
			if ok, err := a.Send(ctx, "conn/nobody", []byte{1, 1, 'x'}); ok || err != nil {
				t.Fatalf("send to nobody: %v %v", ok, err)
			}

			srv.Stop()
			waitFor(t, "a to see the broker down", func() bool { return !a.Status().Up })
			if _, err := a.Publish(ctx, "channel/room.1", []byte{1, 1}); err == nil {
				t.Fatal("a publish with the broker down succeeded")
			}
			b.Subscribe("channel/later")       // while down: made on reconnect
			time.Sleep(500 * time.Millisecond) // a few failed reconnects
			srv.Start()
			settled(t, a, b)
			if n, err := a.Publish(ctx, "channel/later", Message{Kind: Text, Payload: []byte("after")}.Encode()); err != nil || (n != -1 && n != 1) {
				t.Fatalf("publish after restart: %d %v", n, err)
			}
			waitFor(t, "b to receive on a topic subscribed while down", func() bool { return len(b.received("channel/later")) == 1 })
			a.Publish(ctx, "channel/room.1", Message{Kind: Text, Payload: []byte("again")}.Encode())
			waitFor(t, "both to receive after restart", func() bool {
				return len(a.received("channel/room.1")) == 51 && len(b.received("channel/room.1")) == 51
			})
			a.mu.Lock()
			states := fmt.Sprint(a.states)
			a.mu.Unlock()
			if states != "[true false true]" {
				t.Errorf("a was told %s, want [true false true] (up, lost once, recovered once)", states)
			}
		})
	}
}
