package websocket

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-websocket/caddy-websocket/internal/relay"
	"github.com/caddy-websocket/caddy-websocket/internal/terminate"
	"github.com/caddy-websocket/caddy-websocket/internal/tunnel"
	"github.com/caddy-websocket/caddy-websocket/internal/upgrade"
)

// mode is what differs between relay modes along the data path.
type mode interface {
	name() string
	// check refuses requests the mode cannot serve, before anything is
	// dialled.
	check(h *Handler, r *http.Request) *refusal
	// request completes the backend's upgrade request in hs (hs.hdr,
	// hs.key) from the client's.
	request(r *http.Request, hs *handshake)
	// open reaches a backend and makes its handshake: the backend's
	// answer is a 101 to go on with, or anything else to pass to the
	// client.
	open(h *Handler, ctx context.Context, r *http.Request, w http.ResponseWriter, hs *handshake) (*backendConn, *refusal)
	// answer checks the backend's 101 (res), sets the client's 101
	// headers in out and returns what they agree to.
	answer(h *Handler, r *http.Request, res *http.Response, out http.Header) (agreement, *refusal)
	// newRelay builds the connection's relay over the client's connection
	// and the backend; nothing moves until its Start.
	newRelay(h *Handler, c *connection, e established) relayConn
}

func (h *Handler) mode() mode {
	switch h.Mode {
	case "terminate":
		return terminateMode{}
	case "http":
		return httpMode{}
	}
	return tunnelMode{}
}

// hooks are what every mode tells the gateway of connection c: its end
// (logs, metrics, the hub), drops to learn idle timeouts from, and keepalive
// round trips.
func (h *Handler) hooks(c *connection) relay.Hooks {
	return relay.Hooks{
		OnClose: func(s relay.Summary) { h.closed(c, s) },
		OnDrop:  h.learnFrom(c),
		OnPong:  observeRTT,
	}
}

// wsBackend is how tunnel and terminate modes reach a backend: a dial and
// a WebSocket upgrade (backend.go).
type wsBackend struct{}

// open dials an upstream and sends the upgrade.
func (wsBackend) open(h *Handler, ctx context.Context, r *http.Request, w http.ResponseWriter, hs *handshake) (*backendConn, *refusal) {
	return h.connect(ctx, r, w, hs)
}

// tunnelMode relays frames verbatim: the handshake is end to end.
type tunnelMode struct{ wsBackend }

func (tunnelMode) name() string { return "tunnel" }

func (tunnelMode) check(*Handler, *http.Request) *refusal { return nil }

// request passes the client's key on; a stream client has none, so the
// gateway makes one for the backend's HTTP/1.1 upgrade.
func (tunnelMode) request(r *http.Request, hs *handshake) {
	hs.key = r.Header.Get("Sec-WebSocket-Key")
	if hs.extended {
		hs.key = newKey()
		hs.hdr.Set("Sec-WebSocket-Key", hs.key)
	}
}

// answer passes the backend's 101 headers to the client as they came
// (subprotocol, extensions, cookies); a stream's 200 has no upgrade
// headers and no accept key.
func (tunnelMode) answer(_ *Handler, r *http.Request, res *http.Response, out http.Header) (agreement, *refusal) {
	copyHeaders(out, res.Header)
	if upgrade.IsExtendedConnect(r) {
		dropUpgradeHeaders(out)
	}
	return agreement{subprotocol: res.Header.Get("Sec-WebSocket-Protocol"), extensions: res.Header.Get("Sec-WebSocket-Extensions")}, nil
}

// copyHeaders puts the backend's headers on the client's answer; cookies
// add to those already set (a cookie selection policy's).
func copyHeaders(out, from http.Header) {
	for k, v := range from {
		if k == "Set-Cookie" {
			out[k] = append(out[k], v...)
			continue
		}
		out[k] = v
	}
}

// dropUpgradeHeaders removes what an HTTP/1.1 upgrade answer has and an
// extended CONNECT answer must not (connection-specific fields are
// malformed in HTTP/2 and HTTP/3).
func dropUpgradeHeaders(h http.Header) {
	for _, k := range hopHeaders {
		h.Del(k)
	}
	h.Del("Sec-WebSocket-Accept")
}

func (tunnelMode) newRelay(h *Handler, c *connection, e established) relayConn {
	return tunnel.New(e.client, e.backend.conn, tunnel.Config{
		Client:  e.pol.Client,
		Backend: e.pol.Backend,
		Hooks:   h.hooks(c),
	})
}

// terminateMode completes the client's handshake itself and opens the
// gateway's own WebSocket connection to the backend, with its own key and
// without the client's extensions (the backend speaks plain frames).
type terminateMode struct{ wsBackend }

func (terminateMode) name() string { return "terminate" }

func (terminateMode) check(h *Handler, r *http.Request) *refusal {
	offered := tokens(r.Header, "Sec-WebSocket-Protocol")
	if len(h.Subprotocols) > 0 && !slices.ContainsFunc(offered, func(p string) bool { return slices.Contains(h.Subprotocols, p) }) {
		return &refusal{status: http.StatusBadRequest, code: "subprotocol", header: "Sec-WebSocket-Protocol", value: strings.Join(offered, ", "),
			reason: fmt.Sprintf("client offers none of the required subprotocols (%s)", strings.Join(h.Subprotocols, ", "))}
	}
	return nil
}

func (terminateMode) request(_ *http.Request, hs *handshake) {
	hs.hdr.Del("Sec-WebSocket-Extensions")
	hs.hdr.Set("Sec-WebSocket-Version", upgrade.Version)
	hs.key = newKey()
	hs.hdr.Set("Sec-WebSocket-Key", hs.key)
}

// answer makes the gateway's own 101: the subprotocol the backend chose
// (or the first required one the client offered), permessage-deflate when
// the client offers it, and the backend's other headers (cookies).
func (terminateMode) answer(h *Handler, r *http.Request, res *http.Response, out http.Header) (agreement, *refusal) {
	// The push API can reach this connection: the backend may name its
	// channels (a tunnel has no message boundary to push at, so its
	// backend's headers pass as they are).
	a := agreement{channels: gripChannels(res.Header)}
	offered := tokens(r.Header, "Sec-WebSocket-Protocol")
	chosen := res.Header.Get("Sec-WebSocket-Protocol")
	switch {
	case chosen != "" && !slices.Contains(offered, chosen):
		return a, &refusal{status: http.StatusBadGateway, code: "backend_invalid", header: "Sec-WebSocket-Protocol", value: chosen,
			reason: fmt.Sprintf("backend chose subprotocol %q, which the client did not offer", chosen)}
	case chosen == "":
		for _, p := range h.Subprotocols {
			if slices.Contains(offered, p) {
				chosen = p
				break
			}
		}
	}
	for k, v := range res.Header {
		if !strings.HasPrefix(http.CanonicalHeaderKey(k), "Sec-Websocket-") {
			copyHeaders(out, http.Header{k: v})
		}
	}
	if upgrade.IsExtendedConnect(r) {
		dropUpgradeHeaders(out)
	} else {
		out.Set("Upgrade", "websocket")
		out.Set("Connection", "Upgrade")
		out.Set("Sec-WebSocket-Accept", upgrade.AcceptKey(r.Header.Get("Sec-WebSocket-Key")))
	}
	if chosen != "" {
		out.Set("Sec-WebSocket-Protocol", chosen)
	}
	a.subprotocol = chosen
	if h.Compression != "off" && terminate.OffersDeflate(r.Header) {
		out.Set("Sec-WebSocket-Extensions", terminate.DeflateResponse)
		a.deflate, a.extensions = true, "permessage-deflate"
	}
	return a, nil
}

func (terminateMode) newRelay(h *Handler, c *connection, e established) relayConn {
	// What answer put in the client's 101 is what the relay speaks.
	side := h.Backend
	if side == nil {
		side = &LegConfig{}
	}
	cfg := terminate.Config{
		Client:            e.pol.Client,
		Backend:           e.pol.Backend,
		MaxMessageSize:    h.MaxMessageSize,
		MaxMessageRate:    h.MaxMessageRate,
		Deflate:           e.agreed.deflate,
		Reconnect:         side.OnClose == "reconnect",
		ReconnectAttempts: side.ReconnectAttempts,
		ReconnectWindow:   time.Duration(side.ReconnectWindow),
		ReconnectBuffer:   side.ReconnectBuffer,
		Hooks:             h.hooks(c),
		OnReconnect: func(attempt int, err error) {
			if err != nil {
				h.logger.Warn("websocket backend reconnect failed", zap.String("id", c.id), zap.Int("attempt", attempt), zap.Error(err))
				return
			}
			countReconnect()
			h.logger.Info("websocket backend reconnected", zap.String("id", c.id), zap.Int("attempt", attempt))
		},
	}
	h.applyResume(&cfg, c)
	if cfg.Reconnect {
		redial, moved := h.redialer(c, e.req, e.backend.up, e.agreed.subprotocol)
		cfg.Redial = redial
		log := cfg.OnReconnect
		cfg.OnReconnect = func(attempt int, err error) {
			if err == nil && moved() {
				// The new upstream's policy: what was learned of it.
				c.relay.SetPolicy(c.policies())
			}
			log(attempt, err)
		}
	}
	return terminate.New(e.client, e.backend.conn, cfg)
}

// redialer returns the Redial of a terminated connection, and moved, to
// call once a re-dialled backend took over: the connection then counts
// against that upstream (admin list, metrics, least_conn, learning) and
// its next reconnect tries it first; moved reports whether the upstream
// changed (its policy may differ). Each re-dial runs under the
// connection's owner of the moment: after a reload, the new config's
// upstreams, health and TLS settings. The request is kept as bytes, not as
// a header map: it is held for the connection's life. A re-dial offers
// the backend only the subprotocol the client has, and a key of its own.
func (h *Handler) redialer(c *connection, hs *handshake, first upstream, chosen string) (redial func(context.Context) (net.Conn, []byte, error), moved func() bool) {
	hdr := hs.hdr
	if chosen != "" {
		hdr.Set("Sec-WebSocket-Protocol", chosen)
	} else {
		hdr.Del("Sec-WebSocket-Protocol")
	}
	hdr.Del("Sec-WebSocket-Key")
	req := writeRequest(hs.uri, hs.host, hdr)
	head := slices.Clip(req[:len(req)-2]) // up to the blank line
	// Both closures run on the connection's one re-dial goroutine, in
	// turn: cur and next need no lock.
	cur, next := first, first
	redial = func(ctx context.Context) (net.Conn, []byte, error) {
		o := h.hub.ownerOf(c)
		var conn net.Conn
		var initial []byte
		failed, _ := o.redialTries(cur).run(ctx, func(u upstream, _ func()) error {
			b, err := o.dialOne(ctx, u)
			if err != nil {
				o.hub.failed(o, u, "dial: "+dialReason(err))
				return errors.New(dialReason(err))
			}
			key := newKey()
			re, rf := o.handshakeWith(ctx, u, key, b, append(head, "Sec-WebSocket-Key: "+key+"\r\n\r\n"...))
			if rf != nil {
				return errors.New(rf.reason)
			}
			if re.res.StatusCode != http.StatusSwitchingProtocols {
				re.close()
				return fmt.Errorf("backend answered %s", re.res.Status)
			}
			next = u
			conn, initial = re.conn, re.takeBuffered()
			return nil
		})
		if conn == nil {
			return nil, nil, fmt.Errorf("no backend reachable (%s)", strings.Join(failed, "; "))
		}
		return conn, initial, nil
	}
	moved = func() bool {
		if next.raw == cur.raw {
			return false
		}
		cur = next
		c.moveTo(cur.raw, countLoad(&h.hub.loads, cur.raw))
		return true
	}
	return redial, moved
}
