package websocket

import (
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-websocket/caddy-websocket/internal/relay"
	"github.com/caddy-websocket/caddy-websocket/internal/timeout"
)

// policyFor returns the policies of a connection to upstream from a client
// at remoteAddr: the configured ones, with learned keepalive intervals
// where a side's keepalive is auto.
func (h *Handler) policyFor(up upstream, remoteAddr string) relay.PerSide[timeout.Policy] {
	p := h.policy
	if h.Client.auto() {
		if ip, ok := clientIP(remoteAddr); ok {
			b := h.Client.bounds()
			p.Client.Keepalive = h.hub.learning.networks.For(ip).Interval(b.min, b.max)
		}
	}
	if h.Backend.auto() && up.raw != "" {
		b := h.Backend.bounds()
		l := h.hub.learning.learners.of(up.raw)
		p.Backend.Keepalive = l.Interval(b.min, b.max)
		if t, _ := l.Learned(); t == 0 && h.hub.unproven(up.raw) {
			// Nothing is proven safe but keepalive_min: the probe is still
			// measuring, or ended without a result.
			p.Backend.Keepalive = b.min
		}
	}
	return p
}

func clientIP(remoteAddr string) (netip.Addr, bool) {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		host = remoteAddr
	}
	ip, err := netip.ParseAddr(host)
	return ip, err == nil
}

// AnnounceHeader is the response header that announces the gateway's idle
// timeouts towards the client.
const AnnounceHeader = "WebSocket-Idle-Timeout"

// announce sets AnnounceHeader from a client policy: "ping=20; pong=15;
// idle=300", seconds, naming only what is on.
func (h *Handler) announce(hdr http.Header, p timeout.Policy) {
	var parts []string
	add := func(name string, d time.Duration) {
		if d > 0 {
			parts = append(parts, name+"="+strconv.FormatFloat(d.Seconds(), 'f', -1, 64))
		}
	}
	add("ping", p.Keepalive)
	if p.Keepalive > 0 {
		add("pong", p.PongTimeout)
	}
	add("idle", p.IdleTimeout)
	if h.DrainWindow > 0 {
		// How long a stop spreads its closes (when set explicitly): a
		// client reconnecting after a 1001 can wait a random share of it.
		add("drain", time.Duration(h.DrainWindow))
	}
	if len(parts) == 0 {
		parts = []string{"none"}
	}
	hdr.Set(AnnounceHeader, strings.Join(parts, "; "))
}

// learn is the relays' OnDrop for connection c: with keepalive auto on
// that side, a drop after silence teaches the upstream's (or the client
// network's) idle timeout, and connections that share it ping sooner.
func (h *Handler) learn(c *connection, side relay.Side, silence time.Duration) {
	switch side {
	case relay.Backend:
		if !h.Backend.auto() {
			return
		}
		b := h.Backend.bounds()
		up := c.upstream()
		l := h.hub.learning.learners.of(up)
		if !l.Observe(silence, b.min) {
			return
		}
		t, n := l.Learned()
		h.logger.Info("websocket learned backend idle timeout",
			zap.String("upstream", up),
			zap.Duration("idle_timeout", t),
			zap.Int("drops_seen", n),
			zap.Duration("keepalive", l.Interval(b.min, b.max)))
		h.hub.share("upstream", up, t, n)
		h.hub.refreshPolicies(func(o *connection) bool { return o.upstream() == up })
	case relay.Client:
		if !h.Client.auto() || !c.clientIP.IsValid() {
			return
		}
		b := h.Client.bounds()
		l := h.hub.learning.networks.For(c.clientIP)
		if !l.Observe(silence, b.min) {
			return
		}
		t, n := l.Learned()
		network := timeout.NetworkOf(c.clientIP)
		h.logger.Info("websocket learned client network idle timeout",
			zap.String("network", network.String()),
			zap.Duration("idle_timeout", t),
			zap.Int("drops_seen", n),
			zap.Duration("keepalive", l.Interval(b.min, b.max)))
		h.hub.share("network", network.String(), t, n)
		h.hub.refreshPolicies(func(o *connection) bool { return o.clientIP.IsValid() && network.Contains(o.clientIP) })
	}
}

// learning is what was learned of idle timeouts: per upstream, and per
// client network.
type learning struct {
	learners table[timeout.Learner] // per upstream
	networks timeout.Networks       // per client network
}
