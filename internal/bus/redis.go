package bus

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisBroker carries messages over Redis pub/sub: a topic is the pub/sub
// channel prefix + ":" + topic (pub/sub ignores the database number, so
// the prefix is what keeps fleets apart). It keeps one subscriber
// connection, which it checks with a PING when quiet and replaces, with
// every subscription, when it is lost; publishes use the client's pool.
type redisBroker struct {
	core
	rdb    *redis.Client
	prefix string

	// applying serializes the subscriber connection's changes: a
	// reconnect's full subscription and the changes made since.
	applying sync.Mutex
	mu       sync.Mutex
	ps       *redis.PubSub // the live subscriber connection; nil while down
}

// subscribeBatch bounds the topics of one SUBSCRIBE or UNSUBSCRIBE.
const subscribeBatch = 500

// NewRedis connects to the Redis server of rawURL (redis://, rediss://,
// unix://, as redis.ParseURL reads them) in the background and returns at
// once: while the server is unreachable, publishes fail and the broker
// reconnects with backoff.
func NewRedis(rawURL, prefix string, h Handlers) (Broker, error) {
	opt, err := redis.ParseURL(rawURL)
	if err != nil {
		return nil, err
	}
	if opt.DialTimeout == 0 {
		opt.DialTimeout = RoundTrip
	}
	// A publish that fails is answered at once (503), not retried for
	// seconds; the caller's deadline is honoured.
	opt.MaxRetries = 1
	opt.ContextTimeoutEnabled = true
	if prefix == "" {
		prefix = DefaultPrefix
	}
	b := &redisBroker{rdb: redis.NewClient(opt), prefix: prefix + ":"}
	b.init(h)
	b.wg.Add(2)
	go b.run()
	go b.onKick(b.apply)
	return b, nil
}

func (b *redisBroker) Publish(ctx context.Context, topic string, payload []byte) (int, error) {
	if up, err := b.st.get(); !up {
		return 0, err
	}
	ctx, cancel := withRoundTrip(ctx)
	defer cancel()
	n, err := b.rdb.Publish(ctx, b.prefix+topic, payload).Result()
	return int(n), err
}

// Send publishes to the topic that only the holding instance subscribes
// to: PUBLISH's count of receivers says whether one did.
func (b *redisBroker) Send(ctx context.Context, topic string, payload []byte) (bool, error) {
	n, err := b.Publish(ctx, topic, payload)
	return n > 0, err
}

func (b *redisBroker) Close() error {
	b.cancel()
	b.wg.Wait()
	return b.rdb.Close()
}

// run keeps a subscriber connection: connect, subscribe everything
// wanted, receive until the connection is lost, wait, again.
func (b *redisBroker) run() {
	defer b.wg.Done()
	for n := 0; b.ctx.Err() == nil; {
		ps, err := b.connect()
		if err != nil {
			b.st.set(err)
			select {
			case <-b.ctx.Done():
			case <-time.After(backoff(n)):
			}
			n++
			continue
		}
		n = 0
		b.st.set(nil)
		err = b.receive(ps)
		b.mu.Lock()
		b.ps = nil
		b.mu.Unlock()
		ps.Close()
		b.t.lost()
		if b.ctx.Err() == nil {
			b.st.set(err)
		}
	}
}

// connect opens a subscriber connection and subscribes every wanted
// topic on it.
func (b *redisBroker) connect() (*redis.PubSub, error) {
	ctx, cancel := context.WithTimeout(b.ctx, RoundTrip)
	defer cancel()
	ps := b.rdb.Subscribe(ctx)
	if err := ps.Ping(ctx); err != nil {
		ps.Close()
		return nil, err
	}
	b.applying.Lock()
	defer b.applying.Unlock()
	b.mu.Lock()
	b.ps = ps
	b.mu.Unlock()
	b.t.take() // what they asked for is in all()
	var ops []change
	for _, topic := range b.t.all() {
		ops = append(ops, change{topic, true})
	}
	if err := b.change(ctx, ps, ops); err != nil {
		b.mu.Lock()
		b.ps = nil
		b.mu.Unlock()
		ps.Close()
		return nil, err
	}
	return ps, nil
}

// apply makes the subscription changes recorded since, on the live
// connection. Without one they wait for the next connect, which
// subscribes everything wanted.
func (b *redisBroker) apply() {
	b.applying.Lock()
	defer b.applying.Unlock()
	b.mu.Lock()
	ps := b.ps
	b.mu.Unlock()
	if ops := b.t.take(); ps != nil && len(ops) > 0 {
		ctx, cancel := context.WithTimeout(b.ctx, RoundTrip)
		defer cancel()
		// An error means a broken connection: the receive loop sees it
		// too, and the reconnect subscribes everything again.
		b.change(ctx, ps, ops)
	}
}

// change sends ops as SUBSCRIBE and UNSUBSCRIBE commands, in order; the
// broker's confirmations come back through receive.
func (b *redisBroker) change(ctx context.Context, ps *redis.PubSub, ops []change) error {
	for _, batch := range batches(ops, subscribeBatch) {
		names := make([]string, len(batch))
		for i, c := range batch {
			names[i] = b.prefix + c.topic
		}
		var err error
		if batch[0].sub {
			err = ps.Subscribe(ctx, names...)
		} else {
			err = ps.Unsubscribe(ctx, names...)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// receive hands each message to Receive until the connection is lost: an
// error, or a PING sent after checkEvery of quiet that goes unanswered for
// as long again.
func (b *redisBroker) receive(ps *redis.PubSub) error {
	waiting := false
	for {
		msg, err := ps.ReceiveTimeout(b.ctx, checkEvery)
		if err != nil {
			var ne net.Error
			if b.ctx.Err() != nil || !errors.As(err, &ne) || !ne.Timeout() {
				return err
			}
			if waiting {
				return fmt.Errorf("no answer to PING within %v", checkEvery)
			}
			if err := ps.Ping(b.ctx); err != nil {
				return err
			}
			waiting = true
			continue
		}
		waiting = false
		switch m := msg.(type) {
		case *redis.Message:
			if topic, ok := strings.CutPrefix(m.Channel, b.prefix); ok {
				b.h.Receive(topic, []byte(m.Payload))
			}
		case *redis.Subscription:
			if topic, ok := strings.CutPrefix(m.Channel, b.prefix); ok {
				b.t.confirm(topic, m.Kind == "subscribe")
			}
		}
	}
}
