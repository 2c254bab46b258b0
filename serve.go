package websocket

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/caddy-websocket/caddy-websocket/internal/overhttp"
	"github.com/caddy-websocket/caddy-websocket/internal/relay"
	"github.com/caddy-websocket/caddy-websocket/internal/relay/quiet"
	"github.com/caddy-websocket/caddy-websocket/internal/stream"
	"github.com/caddy-websocket/caddy-websocket/internal/timeout"
	"github.com/caddy-websocket/caddy-websocket/internal/upgrade"
)

// IDHeader carries the connection's id to the backend, so that its logs
// and the gateway's can be joined.
const IDHeader = "X-Websocket-Id"

// ServeHTTP takes the WebSocket upgrades of the route and passes
// everything else to next.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if !upgrade.IsExtendedConnect(r) && !upgrade.IsWebSocket(r) {
		if h.Client != nil && h.Client.Announce {
			h.announce(w.Header(), h.policyFor(upstream{}, r.RemoteAddr).Client)
		}
		return next.ServeHTTP(w, r)
	}
	// Every WebSocket attempt is the gateway's, whatever the HTTP version:
	// served, or refused with a reason, never handed on.
	wait, err := h.serveUpgrade(w, r)
	// An HTTP/2 stream lives only while its handler runs, and this
	// goroutine reads the client's bytes for its life (wait): called here,
	// after serveUpgrade's frame is gone, so that an idle stream's stack
	// holds as little as Caddy's own handler chain allows.
	wait()
	return err
}

// handshake is the backend's upgrade request, made once from the
// client's by the request step; the steps after it only read it.
type handshake struct {
	// extended: the client opened the WebSocket as an HTTP/2 or HTTP/3
	// extended CONNECT stream (answered 200, no key); the backend still
	// gets an HTTP/1.1 upgrade.
	extended bool
	id       string
	uri      string
	host     string
	hdr      http.Header // the backend's upgrade request
	key      string      // the Sec-WebSocket-Key sent to the backend
}

// backendConn is what the open step made: a backend that answered the
// upgrade. A 101 (in mode http, an accepted OPEN) goes on to the relay;
// any other answer is passed to the client as it came.
type backendConn struct {
	up      upstream
	conn    net.Conn          // nil in mode http
	br      *bufio.Reader     // the handshake's reader; holds bytes past the 101
	res     *http.Response    // the backend's answer
	session *overhttp.Session // mode http's backend
	release func()            // gives back the upstream's least_conn count; may be nil
}

// close ends a backend that will not relay: it closes the connection, or
// tells a mode http backend that accepted OPEN that the connection is gone
// (DISCONNECT, in the background: the client's answer does not wait for
// it), and gives back the upstream's count.
func (b *backendConn) close() {
	if b.conn != nil {
		b.conn.Close()
	}
	if s := b.session; s != nil {
		go s.Hangup(context.Background())
	}
	if b.release != nil {
		b.release()
	}
}

// agreement is what the client's 101 agreed to: the backend's, passed on
// (tunnel mode), or the gateway's own (terminate and http modes).
type agreement struct {
	subprotocol string
	extensions  string // as the admin API shows them
	deflate     bool   // the gateway speaks permessage-deflate to the client
	// channels are those the backend's answer subscribed the connection
	// to (Grip-Channel; the terminating modes, which can push).
	channels []string
}

// established is an upgrade both sides agreed to: what a mode builds the
// connection's relay from.
type established struct {
	req     *handshake
	backend *backendConn
	agreed  agreement
	pol     relay.PerSide[timeout.Policy]
	client  net.Conn
}

// serveUpgrade is the data path of one upgrade, top to bottom: validate,
// reserve, dial, backend handshake, answer the client, relay. It returns
// once the relay runs; the connection does not keep this goroutine, except
// an HTTP/2 stream's, which the caller gives to wait (never nil).
func (h *Handler) serveUpgrade(w http.ResponseWriter, r *http.Request) (wait func(), err error) {
	m := h.mode()
	if rf := h.validate(r, m); rf != nil {
		return noWait, h.refuse(w, r, rf)
	}

	release, rf := h.hub.limits.reserve(requestIP(r), h.MaxConnections, h.MaxConnectionsPerIP)
	if rf != nil {
		w.Header().Set("Retry-After", "5")
		return noWait, h.refuse(w, r, rf)
	}
	// What a step took is given back here, in reverse, unless the relay
	// starts: the connection's record then owns it until it ends.
	var undo []func()
	defer func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}()
	undo = append(undo, release)

	if h.resumeOn() {
		// The same client back: its session, not a new backend connection.
		if tok := resumeToken(r); tok != "" {
			if c := h.hub.resume.take(tok); c != nil {
				if wait, ok := h.serveResume(w, r, c); ok {
					return wait, nil // the session keeps its own reservation
				}
			}
		}
	}

	hs := &handshake{id: newID(), hdr: forwardHeaders(r), extended: upgrade.IsExtendedConnect(r)}
	hs.uri, hs.host = requestTarget(r)
	hs.hdr.Set(IDHeader, hs.id)
	m.request(r, hs)

	b, rf := m.open(h, r.Context(), r, w, hs)
	if rf != nil {
		return noWait, h.backendFailed(w, r, rf)
	}
	undo = append(undo, b.close)
	if b.res.StatusCode != http.StatusSwitchingProtocols {
		if h.unhealthyStatus(b.res.StatusCode) {
			h.hub.failed(h, b.up, fmt.Sprintf("answered %d", b.res.StatusCode))
		}
		countUpgrade(protoName(r), "backend_refused")
		h.passThrough(w, r, b.up, b.res)
		return noWait, nil
	}
	h.debugHandshake(hs.id, b.up, r.Header, b.res.Header)

	agreed, rf := m.answer(h, r, b.res, w.Header())
	if rf != nil {
		rf.upstream = b.up.raw
		return noWait, h.backendFailed(w, r, rf)
	}
	pol := h.policyFor(b.up, r.RemoteAddr)
	if h.Client != nil && h.Client.Announce {
		h.announce(w.Header(), pol.Client)
	}
	var token string
	if h.resumeOn() {
		token = newToken()
		h.setResumeCookie(w.Header(), r, token)
	}
	client, fromClient, wait, err := h.takeOver(w, r, hs.extended)
	if err != nil {
		h.logger.Error("websocket hijack failed", zap.Error(err), zap.String("path", r.URL.Path))
		return noWait, nil
	}

	c := h.newConnection(r, hs.id, b.up, agreed)
	if token != "" {
		h.hub.resume.register(token, c)
	}
	c.release = b.release
	c.relay = m.newRelay(h, c, established{req: hs, backend: b, agreed: agreed, pol: pol, client: client})
	undo = nil
	h.opened(c)
	for _, ch := range agreed.channels {
		h.hub.channels.subscribe(c, ch)
	}
	c.relay.Start(fromClient, b.takeBuffered())
	return wait, nil
}

// noWait is the wait of a connection that does not keep the handler's
// goroutine: a hijacked one, or none.
func noWait() {}

// takeOver answers the client and takes its connection: a hijacked
// HTTP/1.1 socket (101), an HTTP/3 stream taken from the server (200), or
// an HTTP/2 stream (200), which lives only while the handler runs, so its
// wait reads it until the relay is done with it.
func (h *Handler) takeOver(w http.ResponseWriter, r *http.Request, extended bool) (client net.Conn, fromClient []byte, wait func(), err error) {
	if !extended {
		client, fromClient, err = h.hijack(w)
		return client, fromClient, noWait, err
	}
	restore := overrideIdleTimeouts(r)
	sc, err := stream.Serve(w, r)
	if err != nil {
		restore()
		return nil, nil, nil, err
	}
	if sc.Detached() {
		// HTTP/3: the stream is the Conn's now, and the handler returns;
		// one goroutine reads the client's bytes.
		restore()
		go sc.Pump()
		return sc, nil, noWait, nil
	}
	// HTTP/2: the handler's goroutine, which must stay in ServeHTTP for the
	// stream to live, is the one that reads the client's bytes; a quiet
	// stream holds no other.
	return sc, nil, func() { sc.Pump(); <-sc.Done(); restore() }, nil
}

// overrideIdleTimeouts lifts Caddy's read and write idle timeouts (a
// minute by default, `servers { timeouts { read_body_idle … } }`) off a
// WebSocket stream for its life: the gateway's own policies govern its
// silence, as on a hijacked connection, where those timeouts never apply.
// Without this, an HTTP/2 or HTTP/3 WebSocket whose client stays silent
// for a minute (keepalive off or longer) would be cut by the server's
// request timeout: the inherited HTTP idle timeout this module exists to
// replace. Caddy's hard read_timeout and write_timeout still apply.
func overrideIdleTimeouts(r *http.Request) (restore func()) {
	const forever = 100 * 365 * 24 * time.Hour
	reader, writer := caddyhttp.IdleTimeoutsFromContext(r.Context())
	var undo []func()
	if reader != nil {
		undo = append(undo, reader.Override(forever, 0))
	}
	if writer != nil {
		undo = append(undo, writer.Override(forever, 0, 0))
	}
	return func() {
		for _, u := range undo {
			u()
		}
	}
}

// validate applies the checks that need no backend: the handshake (RFC
// 6455 §4.2.1), the Origin, and the mode's own.
func (h *Handler) validate(r *http.Request, m mode) *refusal {
	check := upgrade.ValidateRequest
	if upgrade.IsExtendedConnect(r) {
		check = upgrade.ValidateExtendedConnect
	}
	if err := check(r); err != nil {
		return refused(err)
	}
	if err := h.origins.Check(r); err != nil {
		return refused(err)
	}
	return m.check(h, r)
}

// hijack answers the client with a 101 and the headers already set on w,
// takes over its connection, and returns it with any bytes the client sent
// past the handshake. Writing the status through the ResponseWriter lets
// Caddy's access log record 101.
func (h *Handler) hijack(w http.ResponseWriter) (net.Conn, []byte, error) {
	w.WriteHeader(http.StatusSwitchingProtocols)
	client, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return nil, nil, err
	}
	fromClient := buffered(brw.Reader)
	// The relay reads the socket itself when the wrappers Caddy put
	// around it (recorders, the PROXY protocol) hold no bytes: its quiet
	// legs can then park.
	client = quiet.Under(client)
	// The HTTP server's read and write deadlines would otherwise stay on the
	// socket and cut the connection off.
	client.SetDeadline(time.Time{})
	return client, fromClient, nil
}

// buffered returns a copy of what br has read past the handshake, so the
// bufio buffer itself can be dropped.
func buffered(br *bufio.Reader) []byte {
	n := br.Buffered()
	if n == 0 {
		return nil
	}
	b, _ := br.Peek(n)
	return append([]byte(nil), b...)
}

// requestIP is the client address Caddy determined (trusted_proxies
// honoured), or the peer address.
func requestIP(r *http.Request) netip.Addr {
	if s, ok := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string); ok {
		if ip, err := netip.ParseAddr(s); err == nil {
			return ip.Unmap()
		}
	}
	ip, _ := clientIP(r.RemoteAddr)
	return ip.Unmap()
}

// refuse answers a refused upgrade and logs why.
func (h *Handler) refuse(w http.ResponseWriter, r *http.Request, rf *refusal) error {
	countUpgrade(protoName(r), rf.code)
	h.logger.Info("websocket upgrade refused",
		zap.Int("status", rf.status),
		zap.String("reason", rf.reason),
		zap.String("remote", r.RemoteAddr),
		zap.String("path", r.URL.Path),
		zap.String("header", rf.header),
		zap.String("value", rf.value))
	if rf.header == "Sec-WebSocket-Version" {
		w.Header().Set("Sec-WebSocket-Version", upgrade.Version)
	}
	return h.answerError(w, r, rf)
}

// backendFailed answers a client whose backend failed the handshake.
func (h *Handler) backendFailed(w http.ResponseWriter, r *http.Request, rf *refusal) error {
	countUpgrade(protoName(r), rf.code)
	h.logger.Warn("websocket backend handshake failed",
		zap.String("upstream", rf.upstream),
		zap.Int("status", rf.status),
		zap.String("reason", rf.reason),
		zap.String("path", r.URL.Path),
		zap.String("header", rf.header),
		zap.String("value", rf.value))
	return h.answerError(w, r, rf)
}

// answerError hands a refusal to the site's handle_errors routes, when it
// has some, as a caddyhttp.Error whose message is the reason; otherwise the
// client gets the status and the reason as a one-line plain-text body.
func (h *Handler) answerError(w http.ResponseWriter, r *http.Request, rf *refusal) error {
	if srv, ok := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); ok && srv.Errors != nil && len(srv.Errors.Routes) > 0 {
		return caddyhttp.Error(rf.status, errors.New(rf.reason))
	}
	hdr := w.Header()
	hdr.Set("Content-Type", "text/plain; charset=utf-8")
	hdr.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(rf.status)
	fmt.Fprintln(w, rf.reason)
	return nil
}

// passThrough relays a backend's non-101 answer to the client as it came:
// the "server gave 200 OK instead of 101" case must reach the client (and
// the log) with the backend's own status and body.
func (h *Handler) passThrough(w http.ResponseWriter, r *http.Request, up upstream, res *http.Response) {
	defer res.Body.Close()
	h.logger.Warn("websocket backend did not switch protocols",
		zapUpstream(up),
		zap.Int("status", res.StatusCode),
		zap.String("path", r.URL.Path))
	hdr := w.Header()
	for k, v := range res.Header {
		hdr[k] = v
	}
	for _, k := range hopHeaders {
		hdr.Del(k)
	}
	w.WriteHeader(res.StatusCode)
	io.Copy(w, res.Body)
}

// debugHandshake logs both handshakes' headers at debug level, with
// credentials redacted.
func (h *Handler) debugHandshake(id string, up upstream, req, res http.Header) {
	if ce := h.logger.Check(zap.DebugLevel, "websocket handshake"); ce != nil {
		ce.Write(zap.String("id", id), zapUpstream(up),
			zap.Any("request_headers", redacted(req)), zap.Any("response_headers", redacted(res)))
	}
}

func redacted(h http.Header) http.Header {
	c := h.Clone()
	for _, k := range []string{"Cookie", "Set-Cookie", "Authorization", "Proxy-Authorization"} {
		if _, ok := c[k]; ok {
			c[k] = []string{"REDACTED"}
		}
	}
	return c
}

func zapUpstream(u upstream) zap.Field { return zap.String("upstream", u.raw) }
