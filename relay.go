package websocket

import (
	"bufio"
	"net"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-websocket/caddy-websocket/internal/frame"
	"github.com/caddy-websocket/caddy-websocket/internal/terminate"
	"github.com/caddy-websocket/caddy-websocket/internal/timeout"
	"github.com/caddy-websocket/caddy-websocket/internal/tunnel"
)

// startTunnel hands an upgraded pair to a tunnel owned by the hub.
func (h *Handler) startTunnel(r *http.Request, id string, client, backend net.Conn, up upstream, pol [2]timeout.Policy, res *http.Response, brw *bufio.ReadWriter, fromBackend []byte) {
	c := h.newLive(r, id, up, "tunnel")
	t := tunnel.New(client, backend, tunnel.Config{
		Client:  pol[tunnel.Client],
		Backend: pol[tunnel.Backend],
		OnClose: func(s tunnel.Summary) { h.closed(c, s, 0) },
		OnDrop:  func(side tunnel.Side, silence time.Duration) { h.hub.ownerOf(c).learn(c, side, silence) },
		OnPong:  observeRTT,
	})
	c.relay = t
	c.subprotocol = res.Header.Get("Sec-WebSocket-Protocol")
	c.compression = res.Header.Get("Sec-WebSocket-Extensions")
	h.opened(c)
	t.Start(buffered(brw.Reader), fromBackend)
}

// startTerminate hands an upgraded pair to a terminated relay owned by the
// hub.
func (h *Handler) startTerminate(r *http.Request, id string, client, backend net.Conn, up upstream, cfg terminate.Config, subprotocol string, brw *bufio.ReadWriter, fromBackend []byte) {
	c := h.newLive(r, id, up, "terminate")
	cfg.OnClose = func(s terminate.Summary) { h.closed(c, s.Summary, s.Reconnects) }
	cfg.OnDrop = func(side tunnel.Side, silence time.Duration) { h.hub.ownerOf(c).learn(c, side, silence) }
	cfg.OnPong = observeRTT
	cfg.OnReconnect = func(attempt int, err error) {
		if err != nil {
			h.logger.Warn("websocket backend reconnect failed", zap.String("id", c.id), zap.Int("attempt", attempt), zap.Error(err))
			return
		}
		countReconnect()
		h.logger.Info("websocket backend reconnected", zap.String("id", c.id), zap.Int("attempt", attempt))
	}
	t := terminate.New(client, backend, cfg)
	c.relay = t
	c.subprotocol = subprotocol
	if cfg.Deflate {
		c.compression = "permessage-deflate"
	}
	h.opened(c)
	t.Start(buffered(brw.Reader), fromBackend)
}

func (h *Handler) newLive(r *http.Request, id string, up upstream, mode string) *live {
	ip, _ := clientIP(r.RemoteAddr)
	return &live{id: id, mode: mode, owner: h, upstream: up.raw, path: r.URL.Path, remote: r.RemoteAddr,
		clientIP: ip, reservedIP: requestIP(r), start: time.Now()}
}

// opened registers a connection with the hub, arms its lifetime and logs
// it.
func (h *Handler) opened(c *live) {
	h.hub.add(c)
	countUpgrade("accepted")
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
		zap.String("remote", c.remote),
		zap.String("path", c.path),
		zap.String("upstream", c.upstream),
		zap.String("subprotocol", c.subprotocol),
		zap.String("extensions", c.compression))
}

// closed unregisters a finished connection and logs it, once.
func (h *Handler) closed(c *live, s tunnel.Summary, reconnects int) {
	h.hub.remove(c.id)
	countClose(s.Closer, s.Code)
	addClosed(s)
	h.logger.Info("websocket closed",
		zap.String("id", c.id),
		zap.String("mode", c.mode),
		zap.String("closer", s.Closer),
		zap.Int("code", s.Code),
		zap.String("reason", s.Reason),
		zap.Duration("duration", s.End.Sub(s.Start)),
		zap.Int64("bytes_from_client", s.Bytes[tunnel.Client]),
		zap.Int64("bytes_from_backend", s.Bytes[tunnel.Backend]),
		zap.Int64("messages_from_client", s.Messages[tunnel.Client]),
		zap.Int64("messages_from_backend", s.Messages[tunnel.Backend]),
		zap.Int64("pings_to_client", s.Pings[tunnel.Client]),
		zap.Int64("pings_to_backend", s.Pings[tunnel.Backend]),
		zap.Int64("pongs_from_client", s.Pongs[tunnel.Client]),
		zap.Int64("pongs_from_backend", s.Pongs[tunnel.Backend]),
		zap.Duration("rtt_client", s.RTT[tunnel.Client]),
		zap.Duration("rtt_backend", s.RTT[tunnel.Backend]),
		zap.Int("reconnects", reconnects))
}
