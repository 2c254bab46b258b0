package websocket

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/caddy-websocket/caddy-websocket/internal/bus"
)

// The fleet's message bus: the push API's messages reach every instance
// through a broker the fleet already runs (Redis, as Caddy fleets use for
// certificate storage, or NATS). A channel publish goes to the broker
// only, and every instance with subscribers, this one included, delivers
// its copy as the broker hands it over: each subscriber gets it once, and
// in the broker's order. An instance subscribes on the broker to the
// channels its connections are subscribed to, and to one topic per
// connection that can take pushes, so that a push to a connection held by
// another instance reaches it.

func init() {
	caddy.RegisterModule(RedisBus{})
	caddy.RegisterModule(NATSBus{})
}

// fleetBuses holds the open buses, by broker: configs that name the same
// broker share one connection, kept across reloads.
var fleetBuses = caddy.NewUsagePool()

// broker is a websocket.bus module.
type broker interface {
	// brokerKey identifies the broker: configs with equal keys share a bus.
	brokerKey() string
	// redacted names the broker for logs, without credentials.
	redacted() string
	open(bus.Handlers) (bus.Broker, error)
}

// RedisBus is Caddy module websocket.bus.redis: the fleet's messages over
// Redis pub/sub.
type RedisBus struct {
	// URL of the Redis server: redis://[user:password@]host:port,
	// rediss:// for TLS, unix:///path/to/redis.sock. Placeholders such as
	// {env.REDIS_URL} are replaced. Pub/sub ignores the database number.
	URL string `json:"url"`
	// Prefix starts the name of every pub/sub channel the fleet uses,
	// so that fleets can share one Redis (the database number does not
	// separate them). Default: caddy-websocket.
	Prefix string `json:"prefix,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (RedisBus) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "websocket.bus.redis", New: func() caddy.Module { return new(RedisBus) }}
}

// Provision replaces placeholders and checks the URL.
func (r *RedisBus) Provision(caddy.Context) error {
	r.URL = caddy.NewReplacer().ReplaceKnown(r.URL, "")
	if _, err := redis.ParseURL(r.URL); err != nil {
		return fmt.Errorf("bus url %s: %v", redactURL(r.URL), err)
	}
	return nil
}

func (r *RedisBus) brokerKey() string { return "redis " + r.URL + " " + r.Prefix }
func (r *RedisBus) redacted() string  { return redactURL(r.URL) }
func (r *RedisBus) open(h bus.Handlers) (bus.Broker, error) {
	return bus.NewRedis(r.URL, r.Prefix, h)
}

// NATSBus is Caddy module websocket.bus.nats: the fleet's messages over
// core NATS.
type NATSBus struct {
	// URL of the NATS server: nats://[user:password@]host:port, tls:// for
	// TLS; several, comma-separated, for a cluster. Placeholders are
	// replaced.
	URL string `json:"url"`
	// Prefix starts every subject the fleet uses. Default:
	// caddy-websocket.
	Prefix string `json:"prefix,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (NATSBus) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "websocket.bus.nats", New: func() caddy.Module { return new(NATSBus) }}
}

// Provision replaces placeholders and checks the URL.
func (n *NATSBus) Provision(caddy.Context) error {
	n.URL = caddy.NewReplacer().ReplaceKnown(n.URL, "")
	for _, one := range strings.Split(n.URL, ",") {
		u, err := url.Parse(strings.TrimSpace(one))
		if err != nil || (u.Scheme != "nats" && u.Scheme != "tls") || u.Host == "" {
			return fmt.Errorf("bus url %s: want nats://host:port or tls://host:port", redactURL(one))
		}
	}
	return nil
}

func (n *NATSBus) brokerKey() string { return "nats " + n.URL + " " + n.Prefix }
func (n *NATSBus) redacted() string  { return redactURL(n.URL) }
func (n *NATSBus) open(h bus.Handlers) (bus.Broker, error) {
	return bus.NewNATS(n.URL, n.Prefix, h)
}

// redactURL hides a URL's password (several URLs, comma-separated, each).
func redactURL(raw string) string {
	parts := strings.Split(raw, ",")
	for i, p := range parts {
		if u, err := url.Parse(strings.TrimSpace(p)); err == nil {
			parts[i] = u.Redacted()
		} else {
			parts[i] = "(unparsable URL)"
		}
	}
	return strings.Join(parts, ",")
}

// fleetBus is an instance's open bus.
type fleetBus struct {
	broker bus.Broker
	name   string // the broker's redacted URL
	logger *zap.Logger
}

// openBus connects to a broker in the background: Caddy starts while the
// broker is down, and publishes answer 503 until it is reachable.
func openBus(b broker) (*fleetBus, error) {
	f := &fleetBus{name: b.redacted(), logger: caddy.Log().Named("websocket.bus")}
	br, err := b.open(bus.Handlers{Receive: f.receive, State: f.state})
	if err != nil {
		return nil, err
	}
	f.broker = br
	return f, nil
}

// Destruct closes the bus when no config uses it any more.
func (f *fleetBus) Destruct() error { return f.broker.Close() }

// state logs each change once: on loss, and on recovery with every
// subscription renewed.
func (f *fleetBus) state(up bool, err error) {
	setBusUp(up)
	if up {
		f.logger.Info("websocket bus connected", zap.String("broker", f.name))
		return
	}
	f.logger.Warn("websocket bus unreachable; publishes answer 503 until it is back", zap.String("broker", f.name), zap.Error(err))
}

// Topics: a push channel's, and a connection's.
func channelTopic(name string) string { return "channel/" + name }
func connTopic(id string) string      { return "conn/" + id }

// receive delivers what the broker hands over, on its one receiving
// goroutine: pushes are queued on each connection and never waited for.
// A bus that is no longer the running config's delivers nothing, so a
// reload that changes brokers never delivers a message twice.
func (f *fleetBus) receive(topic string, payload []byte) {
	if a := activeApp.Load(); a == nil || a.bus != f {
		return
	}
	countBus("received")
	m, err := bus.Decode(payload)
	if err != nil {
		countDelivery("dropped", 1)
		f.logger.Warn("websocket bus message dropped", zap.String("topic", topic), zap.Error(err))
		return
	}
	kind, name, _ := strings.Cut(topic, "/")
	switch kind {
	case "channel":
		res := deliver(name, m)
		countDelivery("delivered", res.Queued)
		countDelivery("dropped", res.Skipped)
		logPublish(res)
	case "conn":
		c := findLive(name)
		if c == nil || c.push(m) != nil {
			countDelivery("dropped", 1)
			return
		}
		countDelivery("delivered", 1)
	}
}

// currentBus is the bus of the running config, or nil.
func currentBus() *fleetBus {
	if a := activeApp.Load(); a != nil {
		return a.bus
	}
	return nil
}

// busSubscribe and busUnsubscribe change this instance's subscriptions on
// the bus, if there is one; they never wait on the broker. The hub calls
// them under the lock of the table that changed, which activate holds too.
func busSubscribe(topic string) {
	if f := currentBus(); f != nil {
		f.broker.Subscribe(topic)
	}
}

func busUnsubscribe(topic string) {
	if f := currentBus(); f != nil {
		f.broker.Unsubscribe(topic)
	}
}

// activate makes a's bus the one in use and subscribes it to what the
// live connections need, under the hub's locks, so that no subscription
// made or ended meanwhile is missed.
func activate(a *App) {
	hb := currentHub()
	if hb == nil {
		activeApp.Store(a)
		return
	}
	hb.channels.mu.Lock()
	defer hb.channels.mu.Unlock()
	hb.mu.Lock()
	defer hb.mu.Unlock()
	activeApp.Store(a)
	if a.bus == nil {
		return
	}
	for name := range hb.channels.channels {
		a.bus.broker.Subscribe(channelTopic(name))
	}
	for id, c := range hb.conns {
		if c.pushable() {
			a.bus.broker.Subscribe(connTopic(id))
		}
	}
}

// busUnreachable is the admin API's answer to a publish the bus could not
// take.
func busUnreachable(f *fleetBus, err error) error {
	return caddy.APIError{HTTPStatus: http.StatusServiceUnavailable,
		Err: fmt.Errorf("message bus %s unreachable, nothing was published: %v", f.name, err)}
}

// publish sends m to every subscriber of channel on every instance.
func (f *fleetBus) publish(ctx context.Context, channel string, m bus.Message) (publishResult, error) {
	n, err := f.broker.Publish(ctx, channelTopic(channel), m.Encode())
	if err != nil {
		return publishResult{}, busUnreachable(f, err)
	}
	countBus("published")
	res := publishResult{Channel: channel, Bus: true}
	if n >= 0 {
		res.Instances = &n
	}
	return res, nil
}

// send pushes m to a connection another instance holds; false when none
// does.
func (f *fleetBus) send(ctx context.Context, id string, m bus.Message) (bool, error) {
	ok, err := f.broker.Send(ctx, connTopic(id), m.Encode())
	if err != nil {
		return false, busUnreachable(f, err)
	}
	if ok {
		countBus("published")
	}
	return ok, nil
}

// busView is the bus in the admin API's channel listing.
type busView struct {
	Broker  string `json:"broker"`
	Up      bool   `json:"up"`
	Error   string `json:"error,omitempty"`
	Topics  int    `json:"topics"`
	Pending int    `json:"pending"`
}

func (f *fleetBus) view() busView {
	st := f.broker.Status()
	v := busView{Broker: f.name, Up: st.Up, Topics: st.Topics, Pending: st.Pending}
	if st.Err != nil && !errors.Is(st.Err, context.Canceled) {
		v.Error = st.Err.Error()
	}
	return v
}

// Interface guards.
var (
	_ caddy.Provisioner = (*RedisBus)(nil)
	_ caddy.Provisioner = (*NATSBus)(nil)
	_ broker            = (*RedisBus)(nil)
	_ broker            = (*NATSBus)(nil)
)
