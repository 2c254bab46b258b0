package websocket

import (
	"net/http"
	"net/netip"
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
	id          string
	mode        string
	proto       string // the client's HTTP protocol: h1, h2 or h3
	subprotocol string
	compression string
	relay       relayConn
	owner       *Handler // the config whose policies it runs under
	upstream    string
	path        string
	remote      string
	clientIP    netip.Addr
	reservedIP  netip.Addr // the address counted against the connection limits
	start       time.Time
	lifetime    *time.Timer
	release     func() // the upstream's least_conn count, given back at the end
	push        pushQueue
	channels    []string // subscribed to; guarded by the hub's lock
}

func (h *Handler) newConnection(r *http.Request, id string, up upstream) *connection {
	ip, _ := clientIP(r.RemoteAddr)
	return &connection{id: id, mode: h.mode().name(), proto: protoName(r), owner: h, upstream: up.raw, path: r.URL.Path,
		remote: r.RemoteAddr, clientIP: ip, reservedIP: requestIP(r), start: time.Now()}
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
		zap.String("upstream", c.upstream),
		zap.String("subprotocol", c.subprotocol),
		zap.String("extensions", c.compression))
}

// closed unregisters a finished connection and logs it, once.
func (h *Handler) closed(c *connection, s relay.Summary) {
	h.hub.remove(c.id)
	if c.release != nil {
		c.release()
	}
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
