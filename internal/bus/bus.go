// Package bus carries the push API's messages between the instances of a
// fleet through a broker the fleet already runs (Redis pub/sub, NATS), so
// that a publish on any instance reaches the subscribers on every one.
//
// A topic is the gateway's name for what a message is addressed to:
// "channel/<name>" (every subscriber of a push channel) or "conn/<id>"
// (the one instance holding a connection). An instance subscribes on the
// broker only to the topics its own connections need, so N instances do
// not each receive all traffic. A broker maps topics to its own names
// under a prefix, so that fleets can share one broker.
//
// Delivery is at most once per subscribing instance: a message published
// while an instance is cut off from the broker does not reach it later.
// A publish while this instance is cut off fails, so the caller can say so
// (the admin API answers 503) rather than report a delivery that did not
// happen.
package bus

import (
	"context"
	"time"
)

// Broker carries messages between instances.
type Broker interface {
	// Publish sends payload to every instance subscribed to topic and
	// returns once the broker has it: a later publish, from any instance,
	// reaches every subscriber after this one. receivers is how many
	// instances it reached, or -1 when the broker cannot tell.
	Publish(ctx context.Context, topic string, payload []byte) (receivers int, err error)
	// Send sends payload to the instance subscribed to topic; delivered
	// is false when no instance is.
	Send(ctx context.Context, topic string, payload []byte) (delivered bool, err error)
	// Subscribe and Unsubscribe change the topics this instance receives.
	// They never wait on the broker: the change is made in the background,
	// and again after every reconnect.
	Subscribe(topic string)
	Unsubscribe(topic string)
	// Status is the broker's state now.
	Status() Status
	// Close ends the broker's connections and goroutines.
	Close() error
}

// Handlers are what a broker tells its instance.
type Handlers struct {
	// Receive is called with each message for a subscribed topic, on the
	// broker's one receiving goroutine, in the broker's order: it must not
	// block (it queues for connections, never waits on one).
	Receive func(topic string, payload []byte)
	// State is called when the broker becomes unreachable (err says why)
	// and when it is reachable again, with every subscription renewed.
	State func(up bool, err error)
}

// Status is a broker's state.
type Status struct {
	Up bool
	// Err is why the broker is down (nil when up).
	Err error
	// Topics is how many topics this instance is subscribed to; Pending
	// how many of them the broker has not confirmed yet.
	Topics, Pending int
}

// Timeouts of a broker's own round trips: a publish, a subscription, a
// liveness check.
const (
	// RoundTrip bounds a publish or a send when the caller's context has
	// no deadline of its own.
	RoundTrip = 2 * time.Second
	// checkEvery is how often a quiet connection to the broker is checked
	// (a PING); it is declared lost when the check goes unanswered as long.
	checkEvery = 2 * time.Second
	// backoffMin and backoffMax bound the wait between reconnects.
	backoffMin = 100 * time.Millisecond
	backoffMax = 5 * time.Second
)

// DefaultPrefix starts the broker names of a fleet's topics.
const DefaultPrefix = "caddy-websocket"

// withRoundTrip gives ctx the RoundTrip deadline when it has none.
func withRoundTrip(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, RoundTrip)
}

// backoff is the wait before reconnect attempt n (0-based): doubling from
// backoffMin up to backoffMax.
func backoff(n int) time.Duration {
	d := backoffMin
	for i := 0; i < n && d < backoffMax; i++ {
		d *= 2
	}
	return min(d, backoffMax)
}
