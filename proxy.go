package websocket

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-websocket/caddy-websocket/internal/upgrade"
)

// IDHeader carries the connection's id to the backend, so that its logs
// and the gateway's can be joined.
const IDHeader = "X-Websocket-Id"

// proxy takes a validated upgrade request through the data path: dial a
// backend, hand it the upgrade, check its answer, answer the client, and
// hand both connections to a relay (a tunnel, or a terminated pair). It
// returns as soon as the relay runs; the handler goroutine is not kept for
// the connection's life.
func (h *Handler) proxy(w http.ResponseWriter, r *http.Request) bool {
	if h.Mode == "terminate" {
		return h.terminate(w, r)
	}
	key := r.Header.Get("Sec-WebSocket-Key")
	id := newID()
	hdr := forwardHeaders(r)
	hdr.Set(IDHeader, id)
	uri, host := requestTarget(r)
	backend, up, res, br, ok := h.openBackend(w, r, writeRequest(uri, host, hdr), key)
	if !ok {
		return false
	}
	h.debugHandshake(id, up, r.Header, res.Header)
	// The backend's 101 goes to the client as it came (subprotocol,
	// extensions, cookies): the handshake is end to end.
	for k, v := range res.Header {
		w.Header()[k] = v
	}
	pol := h.policyFor(up, r.RemoteAddr)
	if h.Client != nil && h.Client.Announce {
		h.announce(w.Header(), pol[0])
	}
	client, brw, ok := h.hijack(w, r, backend)
	if !ok {
		return false
	}
	h.startTunnel(r, id, client, backend, up, pol, res, brw, buffered(br))
	return true
}

// openBackend dials a backend, sends it req and checks its answer to the
// handshake that carried key. When it returns ok false, the client has been
// answered (a refusal, or the backend's own non-101 answer).
func (h *Handler) openBackend(w http.ResponseWriter, r *http.Request, req []byte, key string) (net.Conn, upstream, *http.Response, *bufio.Reader, bool) {
	backend, up, res, br, err := h.connect(r.Context(), req, key)
	switch {
	case err != nil:
		h.backendFailed(w, r, up, err)
		return nil, up, nil, nil, false
	case res.StatusCode != http.StatusSwitchingProtocols:
		countUpgrade("backend_refused")
		h.passThrough(w, r, up, res)
		backend.Close()
		return nil, up, nil, nil, false
	}
	return backend, up, res, br, true
}

// connect dials a backend and completes a WebSocket handshake with it.
// A non-101 answer is returned with a nil error for the caller to relay.
func (h *Handler) connect(ctx context.Context, req []byte, key string) (net.Conn, upstream, *http.Response, *bufio.Reader, *upgrade.Error) {
	backend, up, derr := h.dial(ctx)
	if derr != nil {
		return nil, up, nil, nil, derr
	}
	hsTimeout := time.Duration(h.HandshakeTimeout)
	if hsTimeout <= 0 {
		hsTimeout = DefaultHandshakeTimeout
	}
	res, br, herr := handshake(backend, req, hsTimeout)
	if herr != nil {
		backend.Close()
		return nil, up, nil, nil, herr
	}
	if res.StatusCode != http.StatusSwitchingProtocols {
		return backend, up, res, br, nil
	}
	if err := upgrade.CheckResponse(res, key); err != nil {
		backend.Close()
		return nil, up, nil, nil, err
	}
	return backend, up, res, br, nil
}

// hijack answers the client with a 101 and the headers already set on w,
// and takes over its connection. Writing the status through the
// ResponseWriter lets Caddy's access log record 101; net/http sends it
// during Hijack, so the relay is registered with the hub a moment after the
// client has its 101, not before.
func (h *Handler) hijack(w http.ResponseWriter, r *http.Request, backend net.Conn) (net.Conn, *bufio.ReadWriter, bool) {
	w.WriteHeader(http.StatusSwitchingProtocols)
	client, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		backend.Close()
		h.logger.Error("websocket hijack failed", zap.Error(err), zap.String("path", r.URL.Path))
		return nil, nil, false
	}
	// The HTTP server's read and write deadlines would otherwise stay on the
	// socket and cut the connection off.
	client.SetDeadline(time.Time{})
	return client, brw, true
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

// backendFailed answers a client whose backend failed the handshake.
func (h *Handler) backendFailed(w http.ResponseWriter, r *http.Request, up upstream, e *upgrade.Error) {
	countUpgrade(e.Code)
	h.logger.Warn("websocket backend handshake failed",
		zapUpstream(up),
		zap.Int("status", e.Status),
		zap.String("reason", e.Reason),
		zap.String("path", r.URL.Path),
		zap.String("header", e.Header),
		zap.String("value", e.Value))
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(e.Status)
	io.WriteString(w, e.Reason+"\n")
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
