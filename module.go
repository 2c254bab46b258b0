// Package websocket is a Caddy module that puts a WebSocket gateway in front
// of WebSocket backends: it takes the upgrade requests of a route (everything
// else goes on to the next handler), validates them with clear errors, dials
// a backend, and relays frames with idle-timeout policies of its own on both
// legs: keepalive pings, pong deadlines, idle timeouts and clean Close frames.
//
// Build Caddy with it using xcaddy:
//
//	xcaddy build --with github.com/caddy-websocket/caddy-websocket
package websocket

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"

	"github.com/caddy-websocket/caddy-websocket/internal/relay"
	"github.com/caddy-websocket/caddy-websocket/internal/timeout"
	"github.com/caddy-websocket/caddy-websocket/internal/upgrade"
)

func init() {
	caddy.RegisterModule(Handler{})
	httpcaddyfile.RegisterHandlerDirective("websocket", parseCaddyfile)
	// After the directives that rewrite, authenticate and wrap requests
	// (rewrite, uri, basic_auth, forward_auth, encode, templates), before
	// the routing blocks and every handler that responds (handle, route,
	// respond, reverse_proxy, php_fastcgi, file_server): websocket is
	// middleware that takes upgrades and passes the rest on, so beside any
	// of them it must see the request first.
	httpcaddyfile.RegisterDirectiveOrder("websocket", httpcaddyfile.Before, "invoke")
	httpcaddyfile.RegisterDirectiveOrder("websocket_status", httpcaddyfile.Before, "invoke")
}

// Defaults of the options, as documented on the fields.
const (
	DefaultKeepalive        = 20 * time.Second
	DefaultPongTimeout      = 15 * time.Second
	DefaultWriteTimeout     = 30 * time.Second
	DefaultDialTimeout      = 5 * time.Second
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultReloadCloseDelay = 5 * time.Second
	DefaultCloseReason      = "max lifetime reached"
	DefaultDrainWindow      = 5 * time.Second
	DefaultCloseGrace       = 5 * time.Second
)

// Handler is the websocket gateway, Caddy module http.handlers.websocket.
//
// Requests that are not WebSocket upgrades pass to the next handler
// untouched. An upgrade request is validated (RFC 6455 §4.2.1) and its
// Origin checked before any backend is dialled; a refusal is answered with a
// one-line plain-text reason (400, 403, or 426 for an unsupported version)
// and logged. An accepted one is sent to a backend; the backend's 101 is
// checked and passed on, any other answer is relayed to the client as it
// came. Then the handler returns, leaving the connection to the relay of
// its mode.
type Handler struct {
	// To lists the backends, as host:port, ws://host[:port],
	// wss://host[:port] (TLS) or unix//path, picked by LoadBalancing's
	// selection policy; a backend that cannot be dialled within
	// DialTimeout is skipped. Required, unless DynamicUpstreamsRaw is set.
	To []string `json:"to,omitempty"`

	// TLS configures the connections to backends over TLS, with the field
	// names and meaning of reverse_proxy's http transport (server_name,
	// insecure_skip_verify, ca (a tls.ca_pool.source module),
	// root_ca_pem_files, client_certificate_file and _key_file,
	// handshake_timeout...). wss:// and https:// upstreams always use TLS;
	// with TLS set, host:port upstreams do too. ALPN is http/1.1: the
	// backend leg is an HTTP/1.1 upgrade. Default: TLS only for wss://
	// upstreams, verified against the system's roots, with the upstream's
	// host name.
	TLS *reverseproxy.TLSConfig `json:"tls,omitempty"`

	// Mode is how connections are relayed. "tunnel" (the default) forwards
	// frames verbatim in both directions, parsing only frame headers.
	// "terminate" completes the WebSocket handshake with the client itself
	// and relays messages to the backend over a connection of its own:
	// every client frame is validated, permessage-deflate is spoken on the
	// client leg only, and the backend may restart under a connected
	// client (see LegConfig.OnClose). "http" terminates the client's WebSocket
	// the same way and talks to a plain HTTP backend in Pushpin's
	// WebSocket-over-HTTP protocol: each batch of client messages is a POST
	// of application/websocket-events to http(s)://upstream + the client's
	// path, and the answer's events go back to the client.
	Mode string `json:"mode,omitempty"`

	// RequestTimeout bounds each request to the backend in mode http, its
	// answer included; past it the client gets Close 1011. Default 10s.
	RequestTimeout caddy.Duration `json:"request_timeout,omitempty"`

	// MaxPending bounds, in mode http, the bytes of client messages held
	// while a request to the backend is in flight; past it the gateway
	// stops reading from the client until the request ends (TCP pushes
	// back). Default 1 MiB.
	MaxPending int64 `json:"max_pending,omitempty"`

	// MaxMessageSize is the largest message, after decompression, that
	// either side may send in terminate mode; a larger one is refused with
	// Close 1009 as soon as its header says so, before it is buffered.
	// Default 1 MiB.
	MaxMessageSize int64 `json:"max_message_size,omitempty"`

	// Compression turns permessage-deflate on the client leg "on" (the
	// default) or "off" in terminate mode. It is negotiated with the client
	// alone (the backend speaks plain frames) and runs without context
	// takeover, so idle connections hold no compression state.
	Compression string `json:"compression,omitempty"`

	// Subprotocols, in terminate mode, lists the subprotocols the route
	// requires: a client that offers none of them gets 400. The client's
	// offer goes to the backend; the client is answered with the backend's
	// choice, or with the first listed one the client offered when the
	// backend chooses none. Without it, the backend's choice is passed on.
	Subprotocols []string `json:"subprotocols,omitempty"`

	// DynamicUpstreamsRaw is a http.reverse_proxy.upstreams module (a,
	// srv, multi, …) whose upstreams are used beside To's, fetched for
	// each connection. Default: none.
	DynamicUpstreamsRaw json.RawMessage `json:"dynamic_upstreams,omitempty" caddy:"namespace=http.reverse_proxy.upstreams inline_key=source"`

	// LoadBalancing picks each connection's upstream (reverse_proxy's
	// selection policies). Default: the first healthy upstream, then the
	// others in turn when one cannot be dialled.
	LoadBalancing *LoadBalancing `json:"load_balancing,omitempty"`

	// HealthChecks marks upstreams down and up. Default: none.
	HealthChecks *HealthChecks `json:"health_checks,omitempty"`

	// DialTimeout bounds the TCP connect to one backend. Default 5s.
	DialTimeout caddy.Duration `json:"dial_timeout,omitempty"`

	// HandshakeTimeout bounds the backend's answer to the upgrade request,
	// from connect to the end of its response headers; past it the client
	// gets 504. Default 10s.
	HandshakeTimeout caddy.Duration `json:"handshake_timeout,omitempty"`

	// Origins lists the browser origins allowed to connect, besides pages
	// on the request's own host (which are always allowed): exact origins
	// ("https://app.example.com"), hosts for any scheme ("example.com:8443"),
	// "null", or "*" for all. Requests without an Origin header (non-browser
	// clients) are allowed. Refused origins get 403.
	Origins []string `json:"origins,omitempty"`

	// MaxLifetime closes a connection with 1001 after this long, give or
	// take 10% at random so that clients connected together don't all
	// reconnect together. Default off.
	MaxLifetime caddy.Duration `json:"max_lifetime,omitempty"`

	// CloseReason is the reason sent with the MaxLifetime close. Default
	// "max lifetime reached".
	CloseReason string `json:"close_reason,omitempty"`

	// ReloadCloseDelay is how long after a config reload a connection whose
	// upstream is gone from the new config is closed with 1012 (Service
	// Restart), plus up to 50% at random to spread the reconnects. Live
	// connections whose upstream is still configured (same mode) are kept
	// and take the new config's policies. Default 5s.
	ReloadCloseDelay caddy.Duration `json:"reload_close_delay,omitempty"`

	// DrainWindow spreads the closes of a Caddy stop (1001, "server
	// shutting down") at random over this long, so that clients do not all
	// reconnect to the remaining instances in the same second; the stop
	// waits for it. "off" closes everything at once. The newest config's
	// value applies. Default 5s.
	DrainWindow Timeout `json:"drain_window,omitempty"`

	// MaxConnections bounds the live WebSocket connections of this Caddy
	// instance (all websocket routes count) that this route lets in; past
	// it, upgrades get 503 with Retry-After before any backend is dialled.
	// Default 0: no bound but the open-file limit.
	MaxConnections int `json:"max_connections,omitempty"`

	// MaxConnectionsPerIP bounds the live connections from one client
	// address, as Caddy determines it (honouring trusted_proxies); past it,
	// 503 with Retry-After. Default 0: no bound, since many users can share
	// an address behind a NAT; 100 or so suits most public sites.
	MaxConnectionsPerIP int `json:"max_connections_per_ip,omitempty"`

	// MaxMessageRate, in terminate mode, bounds the messages per second a
	// client may send, with bursts of as many; a client that sends faster
	// gets Close 1008. Default 0: no bound.
	MaxMessageRate float64 `json:"max_message_rate,omitempty"`

	// Client is the idle-timeout policy of the client leg.
	Client *LegConfig `json:"client,omitempty"`

	// Backend is the idle-timeout policy of the backend leg.
	Backend *LegConfig `json:"backend,omitempty"`

	origins    upgrade.Origins
	pool       upstreamPool
	tlsConfig  *tls.Config  // for TLS upstreams
	httpClient *http.Client // mode http: the backend's requests
	policy     relay.PerSide[timeout.Policy]
	hub        *hub
	holdsHub   bool // Provision took a hold on the hub that Cleanup must release
	logger     *zap.Logger
}

// LegConfig is the idle-timeout policy of one leg of a connection, and
// (backend leg, terminate mode) what happens when it drops.
type LegConfig struct {
	// Keepalive sends a Ping to this side after this much silence on its
	// leg (nothing received from it, or nothing sent to it), or up to 10%
	// sooner: each connection draws its own share, so connections opened
	// together don't ping together. Pings go between frames, masked
	// towards the backend as a client's must be; the Pongs that answer
	// them are consumed, not forwarded. "off" disables. "auto" learns the interval: half the shortest silence
	// after which this upstream (backend side) or this client network (a
	// /24 or /64; client side) dropped a connection, within KeepaliveMin
	// and KeepaliveMax, and KeepaliveMax until something is learned.
	// Default 20s.
	Keepalive Timeout `json:"keepalive,omitempty"`

	// KeepaliveMin bounds a learned keepalive interval from below; shorter
	// silences are not taken for idle timeouts. Default 1s.
	KeepaliveMin caddy.Duration `json:"keepalive_min,omitempty"`

	// KeepaliveMax bounds a learned keepalive interval from above and is
	// the interval before anything is learned. Default 20s.
	KeepaliveMax caddy.Duration `json:"keepalive_max,omitempty"`

	// Announce (client side) adds the header WebSocket-Idle-Timeout to the
	// 101 response, and to plain requests on the route, so that client
	// code can set its own heartbeat: "ping=20; pong=15; idle=300", in
	// seconds, naming what is on: the gateway's keepalive interval towards
	// this client, its pong deadline and its idle timeout.
	Announce bool `json:"announce,omitempty"`

	// PongTimeout closes the leg when a keepalive Ping is not answered
	// within this long. Default 15s.
	PongTimeout Timeout `json:"pong_timeout,omitempty"`

	// IdleTimeout closes the connection after this long without a frame
	// from this side (Pongs to the gateway's own pings do not count), with
	// Close 1001 to both sides. Default off.
	IdleTimeout Timeout `json:"idle_timeout,omitempty"`

	// WriteTimeout closes the connection when a write to this side makes no
	// progress for this long: a peer that stops reading cannot pin the
	// other side's data in the gateway. "off" disables. Default 30s.
	WriteTimeout Timeout `json:"write_timeout,omitempty"`

	// Discover (backend side, with keepalive auto) "probe" measures an
	// upstream's idle timeout before users find it: when nothing is
	// learned yet, the gateway opens a spare WebSocket to it (at
	// ProbeURI, marked X-Websocket-Probe: 1), sends nothing and times the
	// drop both ways: since the probe last sent (a backend timer on what
	// it receives) and since the backend last sent (a timer on what it
	// sends, which a chat room's broadcasts reset); it learns the shorter
	// reading the run does not rule out. While it measures, and if it
	// ends without a result (refused, unreadable drop), the upstream's
	// users ping it every keepalive_min until something is learned. A
	// probe that survives keepalive_max means nothing needs learning.
	// Default "": learn from drops only.
	Discover string `json:"discover,omitempty"`

	// ProbeURI (with discover probe) is the request URI of the probe's
	// upgrade: where the backend accepts its users' WebSockets, so that
	// the probe joins as one of them (in a chat room, a member that says
	// nothing). Default "/".
	ProbeURI string `json:"probe_uri,omitempty"`

	// OnClose is what happens when this side's connection drops without
	// a Close frame. Backend side, terminate mode: "close" (the default)
	// closes the client too; "reconnect" keeps the client and re-dials any
	// upstream with backoff, holding the client's messages meanwhile and
	// delivering them in order. Client side, terminate and http modes:
	// "close" (the default) tells the backend the client went away;
	// "resume" keeps the backend session for ResumeWindow, holding its
	// messages, for the same client to come back with the token the
	// gateway set in a cookie (ResumeCookie): it then gets what it missed,
	// once, in order, and the backend sees nothing.
	OnClose string `json:"on_close,omitempty"`

	// ResumeWindow (client side, on_close resume) is how long a detached
	// session waits for its client; then the backend gets 1001 "client went
	// away", as at the drop. Default 30s.
	ResumeWindow caddy.Duration `json:"resume_window,omitempty"`

	// ResumeBuffer (client side, on_close resume) bounds the bytes of
	// backend messages kept for a client that may not have read them and
	// held while it is away; past it the session ends as the drop would
	// have ended it. Default 1 MiB.
	ResumeBuffer int64 `json:"resume_buffer,omitempty"`

	// ReconnectAttempts bounds the re-dials after one drop. Default 0: no
	// bound but ReconnectWindow.
	ReconnectAttempts int `json:"reconnect_attempts,omitempty"`

	// ReconnectWindow bounds the time one drop may take to recover; then
	// the client gets Close 1011. Default 10s.
	ReconnectWindow caddy.Duration `json:"reconnect_window,omitempty"`

	// ReconnectBuffer bounds the bytes of client messages held while the
	// backend is away; past it the client gets Close 1011. Default 1 MiB.
	ReconnectBuffer int64 `json:"reconnect_buffer,omitempty"`
}

func (s *LegConfig) policy() timeout.Policy {
	if s == nil {
		s = &LegConfig{}
	}
	if s.Keepalive == Auto {
		return timeout.Policy{
			Keepalive:    s.bounds().max,
			PongTimeout:  s.PongTimeout.or(DefaultPongTimeout),
			IdleTimeout:  s.IdleTimeout.or(0),
			WriteTimeout: s.WriteTimeout.or(DefaultWriteTimeout),
		}
	}
	return timeout.Policy{
		Keepalive:    s.Keepalive.or(DefaultKeepalive),
		PongTimeout:  s.PongTimeout.or(DefaultPongTimeout),
		IdleTimeout:  s.IdleTimeout.or(0),
		WriteTimeout: s.WriteTimeout.or(DefaultWriteTimeout),
	}
}

type bounds struct{ min, max time.Duration }

func (s *LegConfig) bounds() bounds {
	b := bounds{time.Second, DefaultKeepalive}
	if s != nil && s.KeepaliveMin > 0 {
		b.min = time.Duration(s.KeepaliveMin)
	}
	if s != nil && s.KeepaliveMax > 0 {
		b.max = time.Duration(s.KeepaliveMax)
	}
	return b
}

func (s *LegConfig) auto() bool { return s != nil && s.Keepalive == Auto }

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.websocket",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision sets up the handler.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if err := initMetrics(ctx.GetMetricsRegistry()); err != nil {
		return err
	}
	var err error
	if h.origins, err = upgrade.ParseOrigins(h.Origins); err != nil {
		return err
	}
	if err := h.loadUpstreams(ctx); err != nil {
		return err
	}
	anyTLS := h.TLS != nil
	for _, u := range h.pool.static {
		anyTLS = anyTLS || u.tls
	}
	for _, t := range h.pool.templated {
		anyTLS = anyTLS || strings.HasPrefix(t, "wss://") || strings.HasPrefix(t, "https://")
	}
	if anyTLS {
		tc := h.TLS
		if tc == nil {
			tc = &reverseproxy.TLSConfig{}
		}
		if h.tlsConfig, err = tc.MakeTLSClientConfig(ctx); err != nil {
			return fmt.Errorf("websocket: tls: %v", err)
		}
		if h.tlsConfig == nil {
			h.tlsConfig = new(tls.Config) // an empty TLSConfig makes none: the system's roots
		}
		h.tlsConfig.NextProtos = []string{"http/1.1"}
	}
	if h.Mode == "http" {
		h.httpClient = h.newHTTPClient()
	}
	h.policy.Client = h.Client.policy()
	h.policy.Backend = h.Backend.policy()
	if h.hub, err = loadHub(); err != nil {
		return err
	}
	h.holdsHub = true
	h.hub.register(h)
	if h.Backend.auto() || h.Client.auto() {
		h.hub.startSharing(ctx.Storage(), h.logger)
	}
	h.startActiveChecks(ctx)
	h.probeUpstreams()
	return nil
}

// Validate checks the configuration.
func (h *Handler) Validate() error {
	if len(h.To) == 0 && h.DynamicUpstreamsRaw == nil && h.pool.dynamic == nil {
		return fmt.Errorf("websocket: no upstream: set 'to' or dynamic upstreams")
	}
	if err := checkMode(h.Mode); err != nil {
		return fmt.Errorf("websocket: mode: %v", err)
	}
	if err := checkCompression(h.Compression); err != nil {
		return fmt.Errorf("websocket: compression: %v", err)
	}
	if h.Mode == "" || h.Mode == "tunnel" {
		switch {
		case h.Client != nil && h.Client.OnClose == "resume":
			return fmt.Errorf("websocket: client on_close resume needs mode terminate or http: in tunnel mode the gateway does not own the client's handshake and frames, so it cannot replay what the client missed")
		case h.MaxMessageSize != 0, h.Compression != "", len(h.Subprotocols) > 0,
			h.Client != nil && h.Client.OnClose != "", h.Backend != nil && h.Backend.OnClose != "":
			return fmt.Errorf("websocket: max_message_size, compression, subprotocols and on_close need mode terminate or http (a tunnel relays frames as they are)")
		}
	}
	if h.Mode != "http" && (h.RequestTimeout != 0 || h.MaxPending != 0) {
		return fmt.Errorf("websocket: request_timeout and max_pending need mode http")
	}
	if h.Mode == "http" {
		switch {
		case h.Backend != nil:
			return fmt.Errorf("websocket: mode http has no backend block: an HTTP backend holds no connection to keep alive, probe or reconnect")
		case h.RequestTimeout < 0 || h.MaxPending < 0:
			return fmt.Errorf("websocket: request_timeout and max_pending must be positive")
		}
	}
	if h.Client != nil {
		if err := oneOf(h.Client.OnClose, "close", "resume"); err != nil {
			return fmt.Errorf("websocket: client on_close: %v (a client is resumed, not reconnected: the gateway does not dial clients)", err)
		}
		if h.Client.ResumeWindow < 0 || h.Client.ResumeBuffer < 0 {
			return fmt.Errorf("websocket: resume_window and resume_buffer must be positive")
		}
		if (h.Client.ResumeWindow != 0 || h.Client.ResumeBuffer != 0) && h.Client.OnClose != "resume" {
			return fmt.Errorf("websocket: resume_window and resume_buffer need on_close resume in the client block")
		}
	}
	if h.Backend != nil && (h.Backend.ResumeWindow != 0 || h.Backend.ResumeBuffer != 0) {
		return fmt.Errorf("websocket: resume_window and resume_buffer belong in the client block")
	}
	if h.Backend != nil {
		if err := checkOnClose(h.Backend.OnClose); err != nil {
			return fmt.Errorf("websocket: on_close: %v", err)
		}
	}
	if h.MaxMessageSize < 0 {
		return fmt.Errorf("websocket: max_message_size must be positive")
	}
	if h.MaxConnections < 0 || h.MaxConnectionsPerIP < 0 || h.MaxMessageRate < 0 {
		return fmt.Errorf("websocket: connection and message limits must be positive")
	}
	if h.MaxMessageRate > 0 && (h.Mode == "" || h.Mode == "tunnel") {
		return fmt.Errorf("websocket: max_message_rate needs mode terminate or http (a tunnel does not read messages)")
	}
	for _, sd := range []struct {
		name string
		s    *LegConfig
	}{{"client", h.Client}, {"backend", h.Backend}} {
		if sd.s == nil {
			continue
		}
		if sd.s.PongTimeout == Auto || sd.s.IdleTimeout == Auto || sd.s.WriteTimeout == Auto {
			return fmt.Errorf("websocket: %s: only keepalive can be auto", sd.name)
		}
		if b := sd.s.bounds(); b.min > b.max {
			return fmt.Errorf("websocket: %s: keepalive_min %v is above keepalive_max %v", sd.name, b.min, b.max)
		}
		if sd.s.Discover != "" && sd.name == "client" {
			return fmt.Errorf("websocket: discover belongs in the backend block (a client cannot be probed: the gateway does not open client connections)")
		}
		if sd.s.Discover == "probe" && !sd.s.auto() {
			return fmt.Errorf("websocket: discover probe needs keepalive auto")
		}
		if sd.s.ProbeURI != "" && (sd.s.Discover != "probe" || !strings.HasPrefix(sd.s.ProbeURI, "/")) {
			return fmt.Errorf("websocket: %s: probe_uri %q needs discover probe and a URI that starts with /", sd.name, sd.s.ProbeURI)
		}
		if sd.s.Announce && sd.name == "backend" {
			return fmt.Errorf("websocket: announce belongs in the client block")
		}
	}
	return nil
}

// Cleanup releases this config's hold on the connection hub. Live
// connections are owned by the hub, not by the config, so a reload leaves
// them running; only when no config uses the hub (Caddy stops) are they
// closed, with 1001.
func (h *Handler) Cleanup() error {
	if !h.holdsHub {
		return nil // Provision failed before it took a hold
	}
	// h.hub stays set: requests of this config may still be in flight, and
	// the connections they start belong to the hub all the same.
	h.holdsHub = false
	h.hub.retire(h)
	return releaseHub()
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ caddyfile.Unmarshaler       = (*Handler)(nil)
)
