package bus

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// natsBroker carries messages over core NATS: a topic "kind/name" is the
// subject prefix.kind.<name in base64url> (a channel's name may hold the
// dots and wildcards subjects reserve). nats.go reconnects and renews the
// subscriptions itself; every subscription delivers into one Go channel,
// read by one goroutine, so the order of messages across topics is the
// server's.
type natsBroker struct {
	core
	nc     *nats.Conn
	prefix string
	msgs   chan *nats.Msg
	subs   map[string]*nats.Subscription // apply's own
}

// natsPending is how many received messages may wait for the receiving
// goroutine; past it the server's messages are dropped (a slow consumer,
// which nats.go reports).
const natsPending = 1 << 16

// NewNATS connects to the NATS server(s) of rawURL (nats://, tls://;
// comma-separated for a cluster) in the background and returns at once.
func NewNATS(rawURL, prefix string, h Handlers) (Broker, error) {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if strings.ContainsAny(prefix, " \t\r\n*>") || strings.HasPrefix(prefix, ".") || strings.HasSuffix(prefix, ".") {
		return nil, fmt.Errorf("prefix %q is not a NATS subject: no spaces, wildcards or leading/trailing dots", prefix)
	}
	b := &natsBroker{prefix: prefix + ".", msgs: make(chan *nats.Msg, natsPending), subs: map[string]*nats.Subscription{}}
	b.init(h)
	nc, err := nats.Connect(rawURL,
		nats.Name("caddy-websocket"),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		nats.CustomReconnectDelay(func(attempts int) time.Duration { return backoff(attempts - 1) }),
		// Liveness of a quiet connection, as the Redis broker checks it.
		nats.PingInterval(checkEvery),
		nats.MaxPingsOutstanding(1),
		nats.ConnectHandler(func(*nats.Conn) { b.up() }),
		nats.ReconnectHandler(func(*nats.Conn) { b.up() }),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if b.ctx.Err() != nil {
				return // Close: not an outage
			}
			if err == nil {
				err = errors.New("disconnected")
			}
			b.t.lost()
			b.st.set(err)
		}),
		nats.Timeout(RoundTrip),
	)
	if err != nil {
		return nil, err
	}
	b.nc = nc
	if nc.IsConnected() {
		b.up()
	} else {
		b.st.set(errConnecting)
	}
	b.wg.Add(2)
	go b.receive()
	go b.onKick(b.apply)
	return b, nil
}

// up records the connection made (or made again), and has apply confirm
// the subscriptions nats.go renewed.
func (b *natsBroker) up() {
	b.st.set(nil)
	b.t.poke()
}

// Publish sends and then flushes: once the server has answered the
// flush's PING it has the message, so it reaches every subscriber before
// any later publish. Core NATS does not count receivers.
func (b *natsBroker) Publish(ctx context.Context, topic string, payload []byte) (int, error) {
	if up, err := b.st.get(); !up || !b.nc.IsConnected() {
		if err == nil {
			err = errors.New("not connected")
		}
		return 0, err
	}
	ctx, cancel := withRoundTrip(ctx)
	defer cancel()
	if err := b.nc.Publish(b.subject(topic), payload); err != nil {
		return 0, err
	}
	return -1, b.nc.FlushWithContext(ctx)
}

// Send is a request that the holding instance answers as it takes the
// message; the server says at once when no instance subscribes.
func (b *natsBroker) Send(ctx context.Context, topic string, payload []byte) (bool, error) {
	if up, err := b.st.get(); !up {
		return false, err
	}
	ctx, cancel := withRoundTrip(ctx)
	defer cancel()
	_, err := b.nc.RequestWithContext(ctx, b.subject(topic), payload)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return false, nil
	case err != nil:
		return false, err
	}
	return true, nil
}

func (b *natsBroker) Close() error {
	b.cancel()
	b.nc.Close()
	b.wg.Wait()
	return nil
}

// subject is a topic's NATS subject.
func (b *natsBroker) subject(topic string) string {
	kind, name, _ := strings.Cut(topic, "/")
	return b.prefix + kind + "." + base64.RawURLEncoding.EncodeToString([]byte(name))
}

// topic is the topic of a subject, or false for one that is not a topic.
func (b *natsBroker) topic(subject string) (string, bool) {
	rest, ok := strings.CutPrefix(subject, b.prefix)
	if !ok {
		return "", false
	}
	kind, enc, ok := strings.Cut(rest, ".")
	if !ok {
		return "", false
	}
	name, err := base64.RawURLEncoding.DecodeString(enc)
	if err != nil {
		return "", false
	}
	return kind + "/" + string(name), true
}

// receive hands each message to Receive, answering first the requests of
// Send (the answer says only that this instance took the message).
func (b *natsBroker) receive() {
	defer b.wg.Done()
	for {
		select {
		case <-b.ctx.Done():
			return
		case m := <-b.msgs:
			topic, ok := b.topic(m.Subject)
			if !ok {
				continue
			}
			if m.Reply != "" {
				m.Respond(nil)
			}
			b.h.Receive(topic, m.Data)
		}
	}
}

// apply makes the subscription changes recorded since, then flushes: once
// the server answers, it has them all.
func (b *natsBroker) apply() {
	for _, c := range b.t.take() {
		s := b.subs[c.topic]
		switch {
		case c.sub && s == nil:
			s, err := b.nc.ChanSubscribe(b.subject(c.topic), b.msgs)
			if err != nil {
				continue // the connection is closed: nothing to renew
			}
			b.subs[c.topic] = s
		case !c.sub && s != nil:
			s.Unsubscribe()
			delete(b.subs, c.topic)
		}
	}
	if !b.nc.IsConnected() {
		return // nats.go sends them on reconnect; up() pokes again
	}
	ctx, cancel := context.WithTimeout(b.ctx, RoundTrip)
	defer cancel()
	if b.nc.FlushWithContext(ctx) == nil {
		for topic := range b.subs {
			b.t.confirm(topic, true)
		}
	}
}
