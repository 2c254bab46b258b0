package websocket

import (
	"net/http"
	"net/netip"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-websocket/caddy-websocket/internal/frame"
	"github.com/caddy-websocket/caddy-websocket/internal/relay"
	"github.com/caddy-websocket/caddy-websocket/internal/timeout"
)

// relayConn is a running relay of either mode.
type relayConn interface {
	Start(fromClient, fromBackend []byte)
	Close(code frame.StatusCode, reason string)
	SetPolicy(client, backend timeout.Policy)
	Stats() relay.Stats
}

// connection is a WebSocket connection the hub owns, from the moment its
// relay is registered until it ends.
type connection struct {
	id           string
	mode         string
	proto        string // the client's HTTP protocol: h1, h2 or h3
	subprotocol  string
	extensions   string
	relay        relayConn
	owner        *Handler // the config whose policies it runs under
	path         string
	remote       string
	clientIP     netip.Addr
	reservedIP   netip.Addr // the address counted against the connection limits
	start        time.Time
	lifetime     *time.Timer
	channels     []string // subscribed to; guarded by the channel table's lock
	unsubscribed bool     // ended: no more subscriptions (the same lock)

	// A reconnect (terminate mode) may move the connection to another
	// upstream: mu guards which one, and its least_conn count.
	mu      sync.Mutex
	up      string
	release func() // gives the upstream's least_conn count back
	ended   bool
}

// upstream is the upstream the connection relays to now.
func (c *connection) upstream() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.up
}

// moveTo records that a reconnect went to upstream raw, counted for
// least_conn until release; the previous upstream's count is given back.
func (c *connection) moveTo(raw string, release func()) {
	c.mu.Lock()
	old := c.release
	c.up, c.release = raw, release
	if c.ended {
		old, c.release = release, nil // closed meanwhile: nothing to count
	}
	c.mu.Unlock()
	if old != nil {
		old()
	}
}

// end gives the upstream's count back, once.
func (c *connection) end() {
	c.mu.Lock()
	r := c.release
	c.release, c.ended = nil, true
	c.mu.Unlock()
	if r != nil {
		r()
	}
}

func (h *Handler) newConnection(r *http.Request, id string, up upstream, a agreement) *connection {
	ip, _ := clientIP(r.RemoteAddr)
	return &connection{id: id, mode: h.mode().name(), proto: protoName(r), owner: h, up: up.raw, path: r.URL.Path,
		remote: r.RemoteAddr, clientIP: ip, reservedIP: requestIP(r), start: time.Now(),
		subprotocol: a.subprotocol, extensions: a.extensions}
}

// protoName is the short name of the request's HTTP version.
func protoName(r *http.Request) string {
	switch r.ProtoMajor {
	case 2:
		return "h2"
	case 3:
		return "h3"
	}
	return "h1"
}

// opened registers a connection with the hub, arms its lifetime and logs
// it. From here the hub owns the connection's reservation: closed gives it
// back.
func (h *Handler) opened(c *connection) {
	h.hub.add(c)
	countUpgrade(c.proto, "accepted")
	if lt := time.Duration(h.MaxLifetime); lt > 0 {
		reason := h.CloseReason
		if reason == "" {
			reason = DefaultCloseReason
		}
		c.lifetime = time.AfterFunc(jitter(lt, -0.1, 0.1), func() { c.relay.Close(frame.CloseGoingAway, reason) })
	}
	h.logger.Info("websocket connected",
		zap.String("id", c.id),
		zap.String("mode", c.mode),
		zap.String("proto", c.proto),
		zap.String("remote", c.remote),
		zap.String("path", c.path),
		zap.String("upstream", c.upstream()),
		zap.String("subprotocol", c.subprotocol),
		zap.String("extensions", c.extensions))
}

// closed unregisters a finished connection and logs it, once.
func (h *Handler) closed(c *connection, s relay.Summary) {
	h.hub.remove(c.id)
	c.end()
	countClose(s.Closer, s.Code)
	addClosed(s)
	cl, b := s.Legs.Client, s.Legs.Backend
	h.logger.Info("websocket closed",
		zap.String("id", c.id),
		zap.String("mode", c.mode),
		zap.String("closer", s.Closer),
		zap.Int("code", int(s.Code)),
		zap.String("reason", s.Reason),
		zap.Duration("duration", s.End.Sub(s.Start)),
		zap.Int64("bytes_from_client", cl.Bytes),
		zap.Int64("bytes_from_backend", b.Bytes),
		zap.Int64("messages_from_client", cl.Messages),
		zap.Int64("messages_from_backend", b.Messages),
		zap.Int64("pings_to_client", cl.Pings),
		zap.Int64("pings_to_backend", b.Pings),
		zap.Int64("pongs_from_client", cl.Pongs),
		zap.Int64("pongs_from_backend", b.Pongs),
		zap.Duration("rtt_client", cl.RTT),
		zap.Duration("rtt_backend", b.RTT),
		zap.Int("reconnects", s.Reconnects))
}

// learnFrom is the relays' OnDrop: what the connection's owner learns.
func (h *Handler) learnFrom(c *connection) func(relay.Side, time.Duration) {
	return func(side relay.Side, silence time.Duration) { h.hub.ownerOf(c).learn(c, side, silence) }
}
