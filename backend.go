package websocket

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/caddy-websocket/caddy-websocket/internal/upgrade"
	"go.uber.org/zap"
)

// The way to the backend, for every mode: the one loop that tries
// upstreams (a connection's first dial, mode http's OPEN, a reconnect's
// re-dial), the TCP dial, TLS and the upgrade handshake. Which upstreams
// exist and which the policy picks is upstreams.go's; what the request
// says is request.go's.

// final marks an attempt's failure that another upstream would not mend
// (a backend that was reached but timed out): the loop stops there.
type final struct{ error }

func (f final) Unwrap() error { return f.error }

// tries is how a connection goes through upstreams: next yields one not
// tried yet (marking it tried; nil when none is left), with the release of
// its least_conn count; after a failure, retries more are tried; and
// within tryFor of the start, a new round over all of them begins every
// interval (a backend that is restarting).
type tries struct {
	next     func(tried map[string]bool) (*upstream, func())
	retries  int
	tryFor   time.Duration
	interval time.Duration
}

// tries returns the handler's tries over all with its selection policy:
// lb_retries (default: each upstream once), lb_try_duration and
// lb_try_interval.
func (h *Handler) tries(all []upstream, r *http.Request, w http.ResponseWriter) tries {
	t := tries{
		next:     func(tried map[string]bool) (*upstream, func()) { return h.pick(all, tried, r, w) },
		retries:  len(all) - 1,
		interval: 250 * time.Millisecond,
	}
	if lb := h.LoadBalancing; lb != nil {
		if lb.Retries > 0 {
			t.retries = lb.Retries
		}
		if lb.TryInterval > 0 {
			t.interval = time.Duration(lb.TryInterval)
		}
		t.tryFor = time.Duration(lb.TryDuration)
	}
	return t
}

// run is the one loop that reaches a backend, for a first dial, mode
// http's OPEN and a reconnect alike: it attempts upstreams as t says until
// an attempt succeeds (nil error). It returns each failed attempt's
// "upstream: error" and the last error; attempt must release what it was
// given when it fails.
func (t tries) run(ctx context.Context, attempt func(u upstream, release func()) error) (failed []string, last error) {
	deadline := time.Now().Add(t.tryFor)
	tried := map[string]bool{}
	for n := 0; ; n++ {
		u, release := t.next(tried)
		if u != nil {
			err := attempt(*u, release)
			if err == nil {
				return failed, nil
			}
			failed = append(failed, u.raw+": "+err.Error())
			last = err
			if errors.As(err, new(final)) {
				return failed, last
			}
		}
		more := u != nil && n < t.retries
		if !more && time.Now().Before(deadline) && ctx.Err() == nil {
			// Within try_duration: wait, then try them all again.
			select {
			case <-ctx.Done():
			case <-time.After(t.interval):
			}
			clear(tried)
			n, more = -1, true // a new round: the retries count again
		}
		if !more {
			return failed, last
		}
	}
}

// dial connects to an upstream the policy picks, trying others (and, with
// lb_try_duration, the same again) when one cannot be dialled. The
// returned release gives back the upstream's least_conn count; the
// connection's record keeps it until the connection ends.
func (h *Handler) dial(ctx context.Context, r *http.Request, w http.ResponseWriter) (net.Conn, upstream, func(), *refusal) {
	all, rf := h.candidates(r)
	if rf != nil {
		return nil, upstream{}, nil, rf
	}
	var conn net.Conn
	var up upstream
	var rel func()
	failed, _ := h.tries(all, r, w).run(ctx, func(u upstream, release func()) error {
		c, err := h.dialOne(ctx, u)
		if err != nil {
			release()
			h.hub.failed(h, u, "dial: "+dialReason(err))
			h.logger.Warn("websocket backend dial failed", zapUpstream(u), zap.Error(err))
			return errors.New(dialReason(err))
		}
		conn, up, rel = c, u, release
		return nil
	})
	if conn != nil {
		return conn, up, rel, nil
	}
	if len(failed) == 0 {
		return nil, upstream{}, nil, noHealthyBackend(all)
	}
	return nil, upstream{}, nil, &refusal{status: http.StatusBadGateway, code: "backend_unreachable",
		reason: "no backend reachable (" + strings.Join(failed, "; ") + ")"}
}

// pick chooses, with the selection policy, one of the healthy upstreams
// of all not tried yet, marks it tried and counts it for least_conn until
// release; nil when none is left.
func (h *Handler) pick(all []upstream, tried map[string]bool, r *http.Request, w http.ResponseWriter) (*upstream, func()) {
	var avail []upstream
	for _, u := range all {
		if !tried[u.raw] && h.healthy(u.raw) {
			avail = append(avail, u)
		}
	}
	u := h.choose(avail, r, w)
	if u == nil {
		return nil, nil
	}
	tried[u.raw] = true
	return u, countLoad(&h.hub.loads, u.raw)
}

// dialOne opens the TCP (or Unix) connection to one upstream.
func (h *Handler) dialOne(ctx context.Context, u upstream) (net.Conn, error) {
	d := net.Dialer{Timeout: time.Duration(h.DialTimeout)}
	if d.Timeout <= 0 {
		d.Timeout = DefaultDialTimeout
	}
	return d.DialContext(ctx, u.network, u.addr)
}

// connect dials a backend the selection policy picks and sends it the
// upgrade request of hs; see handshakeWith.
func (h *Handler) connect(ctx context.Context, r *http.Request, w http.ResponseWriter, hs *handshake) (*backendConn, *refusal) {
	conn, up, release, rf := h.dial(ctx, r, w)
	if rf != nil {
		return nil, rf
	}
	b, rf := h.handshakeWith(ctx, up, hs.key, conn, writeRequest(hs.uri, hs.host, hs.hdr))
	if rf != nil {
		release()
		h.hub.failed(h, up, rf.reason)
		rf.upstream = up.raw
		return nil, rf
	}
	b.release = release
	return b, nil
}

// handshakeWith runs TLS (for a TLS upstream) and the upgrade on conn,
// dialled to up: it sends req and reads the answer. A 101 is checked
// against key; any other answer is returned for the caller to pass on,
// with the connection open. On a refusal the connection is closed.
func (h *Handler) handshakeWith(ctx context.Context, up upstream, key string, backend net.Conn, req []byte) (*backendConn, *refusal) {
	hsTimeout := time.Duration(h.HandshakeTimeout)
	if hsTimeout <= 0 {
		hsTimeout = DefaultHandshakeTimeout
	}
	if up.tls {
		tc, rf := h.startTLS(ctx, backend, up, hsTimeout)
		if rf != nil {
			backend.Close()
			return nil, rf
		}
		backend = tc
	}
	res, br, rf := backendHandshake(backend, req, hsTimeout)
	if rf != nil {
		backend.Close()
		return nil, rf
	}
	if res.StatusCode == http.StatusSwitchingProtocols {
		if rf := refused(upgrade.CheckResponse(res, key)); rf != nil {
			backend.Close()
			return nil, rf
		}
	}
	return &backendConn{up: up, conn: backend, res: res, br: br}, nil
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

// backendHandshake sends the upgrade request on conn and reads the backend's
// answer. The returned reader may hold bytes the backend sent after its
// response headers.
func backendHandshake(conn net.Conn, req []byte, timeout time.Duration) (*http.Response, *bufio.Reader, *refusal) {
	conn.SetDeadline(time.Now().Add(timeout))
	if _, err := conn.Write(req); err != nil {
		return nil, nil, &refusal{status: http.StatusBadGateway, code: "backend_invalid",
			reason: "backend closed the connection before the upgrade request was sent: " + err.Error()}
	}
	br := handshakeReaders.Get().(*bufio.Reader)
	br.Reset(conn)
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

// handshakeReaders holds the readers of backend handshakes: a connection
// needs its 4 KiB only until the 101 is read, and one allocated per
// handshake would be garbage that grows the heap, and the process's RSS,
// while connections are being opened.
var handshakeReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4096) }}

// takeBuffered returns what b's handshake reader holds past the 101 and
// gives the reader back: the connection is read directly from here on.
func (b *backendConn) takeBuffered() []byte {
	if b.br == nil {
		return nil
	}
	p := buffered(b.br)
	b.br.Reset(nil)
	handshakeReaders.Put(b.br)
	b.br = nil
	return p
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
