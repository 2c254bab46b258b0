package websocket

import (
	"bufio"
	"io"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-websocket/caddy-websocket/tunnel"
	"github.com/caddy-websocket/caddy-websocket/upgrade"
)

// proxy takes a validated upgrade request through the data path: dial a
// backend, hand it the upgrade, check its answer, answer the client, and
// hand both connections to a tunnel. It returns as soon as the tunnel runs;
// the handler goroutine is not kept for the connection's life.
func (h *Handler) proxy(w http.ResponseWriter, r *http.Request) {
	backend, up, derr := h.dial(r.Context())
	if derr != nil {
		h.refuse(w, r, derr)
		return
	}
	hsTimeout := time.Duration(h.HandshakeTimeout)
	if hsTimeout <= 0 {
		hsTimeout = DefaultHandshakeTimeout
	}
	res, br, herr := handshake(backend, backendRequest(r), hsTimeout)
	if herr != nil {
		backend.Close()
		h.backendFailed(w, r, up, herr)
		return
	}
	if res.StatusCode != http.StatusSwitchingProtocols {
		h.passThrough(w, r, up, res)
		backend.Close()
		return
	}
	if err := upgrade.CheckResponse(res, r.Header.Get("Sec-WebSocket-Key")); err != nil {
		backend.Close()
		h.backendFailed(w, r, up, err)
		return
	}
	fromBackend := buffered(br)

	// The backend's 101 goes to the client as it came (subprotocol,
	// extensions, cookies). Writing the status through the ResponseWriter
	// lets Caddy's access log record 101; Hijack flushes it.
	hdr := w.Header()
	for k, v := range res.Header {
		hdr[k] = v
	}
	w.WriteHeader(http.StatusSwitchingProtocols)
	client, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		backend.Close()
		h.logger.Error("websocket hijack failed", zap.Error(err), zap.String("path", r.URL.Path))
		return
	}
	if err := brw.Flush(); err != nil {
		backend.Close()
		client.Close()
		h.logger.Info("websocket client gone before the 101 was sent", zap.Error(err))
		return
	}
	// The HTTP server's read and write deadlines would otherwise stay on the
	// socket and cut the connection off.
	client.SetDeadline(time.Time{})
	fromClient := buffered(brw.Reader)

	c := &live{upstream: up.raw, path: r.URL.Path, remote: r.RemoteAddr, start: time.Now()}
	logger := h.logger
	hub := h.hub
	c.tunnel = tunnel.New(client, backend, tunnel.Config{
		Client:  h.policy[tunnel.Client],
		Backend: h.policy[tunnel.Backend],
		OnClose: func(s tunnel.Summary) {
			hub.remove(c.id)
			logger.Info("websocket closed",
				zap.String("id", c.id),
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
				zap.Duration("rtt_backend", s.RTT[tunnel.Backend]))
		},
	})
	hub.add(c)
	logger.Info("websocket connected",
		zap.String("id", c.id),
		zap.String("remote", c.remote),
		zap.String("path", c.path),
		zap.String("upstream", c.upstream),
		zap.String("subprotocol", res.Header.Get("Sec-WebSocket-Protocol")),
		zap.String("extensions", res.Header.Get("Sec-WebSocket-Extensions")))
	c.tunnel.Start(fromClient, fromBackend)
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

func zapUpstream(u upstream) zap.Field { return zap.String("upstream", u.raw) }
