package websocket

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-websocket/caddy-websocket/internal/upgrade"
)

// upstream is a backend address, ready to dial.
type upstream struct {
	network, addr string
	raw           string // as configured, for logs
	tls           bool   // wss://, https://, or the handler's TLS is set
}

// host is the Host of the gateway's own requests to u (health checks,
// probes): its address, or localhost for a unix socket.
func (u upstream) host() string {
	if u.network == "unix" {
		return "localhost"
	}
	return u.addr
}

// parseUpstream accepts host:port, :port, ws://host[:port],
// http://host[:port], wss://host[:port], https://host[:port] and
// unix//path.
func parseUpstream(s string) (upstream, error) {
	switch {
	case strings.HasPrefix(s, "unix//"):
		return upstream{network: "unix", addr: strings.TrimPrefix(s, "unix/"), raw: s}, nil
	case strings.Contains(s, "://"):
		u, err := url.Parse(s)
		if err != nil {
			return upstream{}, fmt.Errorf("upstream %q: %v", s, err)
		}
		port, secure := "80", false
		switch u.Scheme {
		case "ws", "http":
		case "wss", "https":
			port, secure = "443", true
		default:
			return upstream{}, fmt.Errorf("upstream %q: unknown scheme %q", s, u.Scheme)
		}
		if u.Path != "" && u.Path != "/" {
			return upstream{}, fmt.Errorf("upstream %q: a path is not allowed; the request's own path is used", s)
		}
		host := u.Host
		if u.Port() == "" {
			host = net.JoinHostPort(u.Hostname(), port)
		}
		return upstream{network: "tcp", addr: host, raw: s, tls: secure}, nil
	}
	if _, _, err := net.SplitHostPort(s); err != nil {
		return upstream{}, fmt.Errorf("upstream %q: want host:port, ws://host[:port] or unix//path", s)
	}
	return upstream{network: "tcp", addr: s, raw: s}, nil
}

// connect dials a backend the selection policy picks and sends it the
// upgrade request of hs; see handshakeWith.
func (h *Handler) connect(ctx context.Context, r *http.Request, w http.ResponseWriter, hs *handshake) *refusal {
	backend, up, release, rf := h.dial(ctx, r, w)
	hs.up = up
	if rf != nil {
		return rf
	}
	if rf := h.handshakeWith(ctx, hs, backend, writeRequest(hs.uri, hs.host, hs.hdr)); rf != nil {
		release()
		h.hub.failed(h, up, rf.reason)
		return rf
	}
	hs.release = release
	return nil
}

// handshakeWith runs TLS (for a TLS upstream) and the upgrade on a dialled
// backend: it sends req and reads the answer into hs. A 101 is checked
// against hs.key; any other answer is left in hs.res for the caller to pass
// on, with hs.backend open. On a refusal the backend is closed.
func (h *Handler) handshakeWith(ctx context.Context, hs *handshake, backend net.Conn, req []byte) *refusal {
	hsTimeout := time.Duration(h.HandshakeTimeout)
	if hsTimeout <= 0 {
		hsTimeout = DefaultHandshakeTimeout
	}
	if hs.up.tls {
		tc, rf := h.startTLS(ctx, backend, hs.up, hsTimeout)
		if rf != nil {
			backend.Close()
			return rf
		}
		backend = tc
	}
	res, br, rf := backendHandshake(backend, req, hsTimeout)
	if rf != nil {
		backend.Close()
		return rf
	}
	if res.StatusCode == http.StatusSwitchingProtocols {
		if rf := refused(upgrade.CheckResponse(res, hs.key)); rf != nil {
			backend.Close()
			return rf
		}
	}
	hs.backend, hs.res, hs.br = backend, res, br
	return nil
}

// gatewayRequest is an upgrade request of the gateway's own (a health
// check, a discovery probe) for uri on u, marked with the header mark so
// the backend can tell it from users; it returns the request and its key.
func gatewayRequest(u upstream, uri, mark string) ([]byte, string) {
	key := newKey()
	hdr := http.Header{}
	hdr.Set("Connection", "Upgrade")
	hdr.Set("Upgrade", "websocket")
	hdr.Set("Sec-WebSocket-Version", upgrade.Version)
	hdr.Set("Sec-WebSocket-Key", key)
	hdr.Set(mark, "1")
	return writeRequest(uri, u.host(), hdr), key
}

// startTLS runs the TLS handshake with a backend, within the handshake
// timeout. The server name is the configured one, or the upstream's host.
func (h *Handler) startTLS(ctx context.Context, conn net.Conn, up upstream, timeout time.Duration) (net.Conn, *refusal) {
	cfg := h.tlsConfig
	if cfg.ServerName == "" {
		cfg = cfg.Clone()
		cfg.ServerName, _, _ = net.SplitHostPort(up.addr)
	}
	if h.TLS != nil && h.TLS.HandshakeTimeout > 0 {
		timeout = time.Duration(h.TLS.HandshakeTimeout)
	}
	tc := tls.Client(conn, cfg)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		if ctx.Err() != nil {
			return nil, &refusal{status: http.StatusGatewayTimeout, code: "backend_timeout",
				reason: fmt.Sprintf("backend TLS handshake did not finish within %v", timeout)}
		}
		return nil, &refusal{status: http.StatusBadGateway, code: "backend_tls",
			reason: "backend TLS handshake failed: " + err.Error()}
	}
	return tc, nil
}

// dialReason is the short cause of a dial error, for the client's reason.
func dialReason(err error) string {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "dial timeout"
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		var se *os.SyscallError
		if errors.As(oe.Err, &se) {
			return se.Err.Error()
		}
		return oe.Err.Error()
	}
	return err.Error()
}

// hopHeaders are removed from a forwarded upgrade request, as Caddy's
// reverse_proxy does; the gateway sets its own Connection and Upgrade.
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// forwardHeaders returns the headers of the backend's upgrade request: the
// client's, less hop-by-hop headers, with X-Forwarded-* set. The
// Sec-WebSocket-* headers are kept; the caller changes what its mode needs.
func forwardHeaders(r *http.Request) http.Header {
	hdr := r.Header.Clone()
	for _, c := range r.Header.Values("Connection") {
		for _, f := range strings.Split(c, ",") {
			if f = strings.TrimSpace(f); f != "" {
				hdr.Del(f)
			}
		}
	}
	for _, k := range hopHeaders {
		hdr.Del(k)
	}
	hdr.Set("Connection", "Upgrade")
	hdr.Set("Upgrade", "websocket")
	hdr.Del(":protocol") // an HTTP/2 extended CONNECT's, kept in the map by Go's server

	// Like reverse_proxy: extend X-Forwarded-* only when the request came
	// through a trusted proxy, otherwise replace what the client claimed.
	trusted, _ := caddyhttp.GetVar(r.Context(), caddyhttp.TrustedProxyVarKey).(bool)
	clientIP, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		clientIP = r.RemoteAddr
	}
	if prior := r.Header.Values("X-Forwarded-For"); trusted && len(prior) > 0 {
		hdr.Set("X-Forwarded-For", strings.Join(prior, ", ")+", "+clientIP)
	} else {
		hdr.Set("X-Forwarded-For", clientIP)
	}
	proto := "http"
	if r.TLS != nil {
		proto = "https"
	}
	if !trusted || hdr.Get("X-Forwarded-Proto") == "" {
		hdr.Set("X-Forwarded-Proto", proto)
	}
	if !trusted || hdr.Get("X-Forwarded-Host") == "" {
		hdr.Set("X-Forwarded-Host", r.Host)
	}
	return hdr
}

// requestTarget is the request line's target and Host for the backend: the
// client's own, so the backend sees the path and query it was asked for.
func requestTarget(r *http.Request) (uri, host string) {
	uri = r.RequestURI
	if uri == "" || strings.Contains(uri, "://") || r.Method == http.MethodConnect {
		uri = r.URL.RequestURI()
	}
	return uri, r.Host
}

// writeRequest renders an upgrade request.
func writeRequest(uri, host string, hdr http.Header) []byte {
	n := len(uri) + len(host) + 32
	for k, vs := range hdr {
		for _, v := range vs {
			n += len(k) + len(v) + 4
		}
	}
	b := make([]byte, 0, n)
	b = append(b, "GET "...)
	b = append(b, uri...)
	b = append(b, " HTTP/1.1\r\nHost: "...)
	b = append(b, host...)
	b = append(b, "\r\n"...)
	for k, vs := range hdr {
		for _, v := range vs {
			if strings.ContainsAny(v, "\r\n") {
				continue // cannot come from a parsed request; never split a header
			}
			b = append(b, k...)
			b = append(b, ": "...)
			b = append(b, v...)
			b = append(b, "\r\n"...)
		}
	}
	return append(b, "\r\n"...)
}

// backendHandshake sends the upgrade request on conn and reads the backend's
// answer. The returned reader may hold bytes the backend sent after its
// response headers.
func backendHandshake(conn net.Conn, req []byte, timeout time.Duration) (*http.Response, *bufio.Reader, *refusal) {
	conn.SetDeadline(time.Now().Add(timeout))
	if _, err := conn.Write(req); err != nil {
		return nil, nil, &refusal{status: http.StatusBadGateway, code: "backend_invalid",
			reason: "backend closed the connection before the upgrade request was sent: " + err.Error()}
	}
	br := bufio.NewReaderSize(conn, 4096)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil, nil, &refusal{status: http.StatusGatewayTimeout, code: "backend_timeout",
				reason: fmt.Sprintf("backend did not answer the upgrade within %v", timeout)}
		}
		return nil, nil, &refusal{status: http.StatusBadGateway, code: "backend_invalid",
			reason: "backend sent no valid HTTP response to the upgrade: " + err.Error()}
	}
	if res.StatusCode == http.StatusSwitchingProtocols {
		conn.SetDeadline(time.Time{})
	}
	return res, br, nil
}
