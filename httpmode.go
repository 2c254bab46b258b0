package websocket

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-websocket/caddy-websocket/internal/overhttp"
	"github.com/caddy-websocket/caddy-websocket/internal/terminate"
)

// DefaultRequestTimeout bounds a mode http request to the backend.
const DefaultRequestTimeout = 10 * time.Second

// httpMode terminates the client's WebSocket as terminateMode does and
// speaks WebSocket-over-HTTP to the backend (package overhttp): the OPEN
// request is the backend handshake, its 200 answer makes the client's 101.
type httpMode struct{ terminateMode }

func (httpMode) name() string { return "http" }

// request strips what is the gateway's to say: the upgrade itself, the
// client's extensions (deflate is the gateway's), and the protocol's own
// headers, which a client must not be able to forge.
func (httpMode) request(_ *http.Request, hs *handshake) {
	for _, k := range []string{"Connection", "Upgrade", "Sec-WebSocket-Key", "Sec-WebSocket-Version",
		"Sec-WebSocket-Extensions", "Connection-Id", "Content-Length", "Content-Type", "Accept"} {
		hs.hdr.Del(k)
	}
	for k := range hs.hdr {
		if strings.HasPrefix(k, "Meta-") || strings.HasPrefix(k, "Grip-") {
			delete(hs.hdr, k)
		}
	}
}

// open sends OPEN to an upstream the selection policy picks (the next one
// when one cannot be reached, as lb_retries and lb_try_duration say). A
// 200 answer starting with OPEN becomes hs.res as a 101 with the backend's
// headers; any other answer is left in hs.res for the client, as a
// WebSocket backend's non-101 is.
func (httpMode) open(h *Handler, ctx context.Context, r *http.Request, w http.ResponseWriter, hs *handshake) (*backendConn, *refusal) {
	all, rf := h.candidates(r)
	if rf != nil {
		return nil, rf
	}
	var b *backendConn
	var lastUp string
	failed, last := h.tries(all, r, w).run(ctx, func(u upstream, release func()) error {
		lastUp = u.raw
		s, res, body, err := overhttp.Connect(ctx, h.sessionConfig(hs, u))
		if err != nil {
			release()
			h.hub.failed(h, u, err.Error())
			h.logger.Warn("websocket backend OPEN failed", zapUpstream(u), zap.Error(err))
			if errors.Is(err, overhttp.ErrUnreachable) {
				return err // another upstream may answer
			}
			return final{err}
		}
		b = &backendConn{up: u, release: release}
		if s == nil {
			b.res = refusedOpen(res, body)
			return nil
		}
		hdr := res.Header.Clone()
		overhttp.PrivateHeaders(hdr)
		for _, k := range hopHeaders {
			hdr.Del(k)
		}
		hdr.Del("Date")
		hdr.Del("Server")
		b.session = s
		b.res = &http.Response{StatusCode: http.StatusSwitchingProtocols, Header: hdr}
		return nil
	})
	switch {
	case last == nil && b != nil:
		return b, nil
	case len(failed) == 0:
		return nil, noHealthyBackend(all)
	}
	rf = &refusal{status: http.StatusBadGateway, code: "backend_unreachable", reason: strings.Join(failed, "; "), upstream: lastUp}
	if errors.Is(last, overhttp.ErrTimeout) {
		rf.status, rf.code = http.StatusGatewayTimeout, "backend_timeout"
	}
	return nil, rf
}

// refusedOpen is the client's answer when the backend refused OPEN: its
// own status and body, or, for a 200 whose first event is CLOSE, 403 with
// the CLOSE's code and reason.
func refusedOpen(res *http.Response, body []byte) *http.Response {
	if code, reason, ok := overhttp.RefusalReason(body); ok && res.StatusCode == http.StatusOK {
		msg := fmt.Sprintf("backend refused the connection with CLOSE %d", code)
		if reason != "" {
			msg += ": " + reason
		}
		hdr := http.Header{"Content-Type": {"text/plain; charset=utf-8"}}
		return &http.Response{StatusCode: http.StatusForbidden, Status: "403 Forbidden", Header: hdr,
			Body: io.NopCloser(strings.NewReader(msg + "\n"))}
	}
	res.Body = io.NopCloser(bytes.NewReader(body))
	return res
}

// sessionConfig is how the connection's session reaches upstream u.
func (h *Handler) sessionConfig(hs *handshake, u upstream) overhttp.Config {
	scheme := "http"
	if u.tls {
		scheme = "https"
	}
	timeout := time.Duration(h.RequestTimeout)
	if timeout <= 0 {
		timeout = DefaultRequestTimeout
	}
	maxMsg := h.MaxMessageSize
	if maxMsg <= 0 {
		maxMsg = 1 << 20
	}
	id := hs.id
	host := u.addr
	if u.network == "unix" {
		host = unixHost(u.addr)
	}
	return overhttp.Config{
		Client:     h.httpClient,
		URL:        scheme + "://" + host + hs.uri,
		Host:       hs.host,
		Header:     hs.hdr,
		ID:         id,
		Timeout:    timeout,
		MaxPending: int(h.MaxPending),
		MaxContent: int(maxMsg),
		OnError: func(err error) {
			h.logger.Warn("websocket backend request failed", zap.String("id", id), zapUpstream(u), zap.Error(err))
			h.hub.failed(h, u, err.Error())
		},
	}
}

// newHTTPClient is the HTTP client of mode http: the module's dial and TLS
// settings, connections kept alive between a connection's requests.
func (h *Handler) newHTTPClient() *http.Client {
	dialTimeout := time.Duration(h.DialTimeout)
	if dialTimeout <= 0 {
		dialTimeout = DefaultDialTimeout
	}
	tlsTimeout := time.Duration(h.HandshakeTimeout)
	if h.TLS != nil && h.TLS.HandshakeTimeout > 0 {
		tlsTimeout = time.Duration(h.TLS.HandshakeTimeout)
	}
	if tlsTimeout <= 0 {
		tlsTimeout = DefaultHandshakeTimeout
	}
	var tc = h.tlsConfig
	if tc != nil {
		tc = tc.Clone()
		tc.NextProtos = nil // HTTP/1.1 or HTTP/2, whichever the backend speaks
	}
	dialer := &net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		if path, ok := unixPath(addr); ok {
			return dialer.DialContext(ctx, "unix", path)
		}
		return dialer.DialContext(ctx, network, addr)
	}
	return &http.Client{
		Transport: &http.Transport{
			DialContext:         dial,
			TLSClientConfig:     tc,
			TLSHandshakeTimeout: tlsTimeout,
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     90 * time.Second,
			ForceAttemptHTTP2:   true,
		},
		// A redirect is the backend's answer to pass on, not to follow.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// unixSuffix marks the host of a request URL that stands for a unix
// socket: the transport pools connections per URL host, so each socket
// path gets a host of its own (its hex form), which its dial decodes. The
// requests' Host header is the client's, set apart from the URL.
const unixSuffix = ".unix.invalid"

func unixHost(path string) string { return hex.EncodeToString([]byte(path)) + unixSuffix }

// unixPath is the socket path of a dial address made by unixHost.
func unixPath(addr string) (string, bool) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	enc, ok := strings.CutSuffix(host, unixSuffix)
	if !ok {
		return "", false
	}
	b, err := hex.DecodeString(enc)
	return string(b), err == nil
}

func (m httpMode) newRelay(h *Handler, c *connection, e established) relayConn {
	s := e.backend.session
	if g, ok := s.Grip(); ok {
		h.logger.Debug("websocket backend speaks GRIP", zap.String("id", c.id), zap.String("message_prefix", g.Prefix))
	}
	s.OnControl(func(ctl overhttp.Control) { h.control(c, ctl) })
	cfg := terminate.Config{
		Client:         e.pol.Client,
		MaxMessageSize: h.MaxMessageSize,
		MaxMessageRate: h.MaxMessageRate,
		Deflate:        e.agreed.deflate,
		Hooks:          h.hooks(c),
	}
	h.applyResume(&cfg, c)
	conn := terminate.NewMessageBackend(e.client, s, cfg)
	return &httpModeConn{Conn: conn, session: s}
}

// httpModeConn is a mode http connection: the events that came with OPEN's
// answer go to the client once the relay runs.
type httpModeConn struct {
	*terminate.Conn
	session *overhttp.Session
}

func (r *httpModeConn) Start(fromClient, _ []byte) {
	r.Conn.Start(fromClient, nil)
	r.session.Start(r.Conn)
}

// control applies a GRIP control message of the backend.
func (h *Handler) control(c *connection, ctl overhttp.Control) {
	switch ctl.Type {
	case "subscribe":
		h.hub.channels.subscribe(c, ctl.Channel)
	case "unsubscribe":
		h.hub.channels.unsubscribe(c, ctl.Channel)
	default:
		h.logger.Debug("websocket GRIP control message ignored", zap.String("id", c.id), zap.String("type", ctl.Type))
	}
}
