package websocket

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-websocket/caddy-websocket/internal/terminate"
	"github.com/caddy-websocket/caddy-websocket/internal/upgrade"
)

// Session resume (client { on_close resume }): the Caddy side of
// internal/terminate's detach and Attach. A client's answer (the 101, or
// an HTTP/2 or HTTP/3 stream's 200) sets a cookie with a token of the
// session; a later upgrade to the same route that carries it, while the
// session waits for its client or holds it on a path gone silent, is
// attached to the same backend session instead of dialling a new one.

// ResumeCookie names the cookie that carries a session's resume token. It
// is HttpOnly, SameSite=Strict, Secure on https, scoped to the route's
// path, and lives for the resume window; it is never forwarded to the
// backend.
const ResumeCookie = "caddy_ws_resume"

// DefaultResumeWindow is how long a detached session waits for its client.
const DefaultResumeWindow = 30 * time.Second

// resumable is a relay whose client can come back: terminate and mode
// http connections.
type resumable interface {
	TakeOver() bool
	Attach(conn net.Conn, fromClient []byte, deflate bool) error
	Detached() (bool, time.Time)
}

// resumeTable maps tokens to the sessions they resume. A token is used
// once: taking it removes it, and each resume issues a new one.
type resumeTable struct {
	mu      sync.Mutex
	byToken map[string]*connection
	tokenOf map[*connection]string
}

// newToken returns 128 bits from crypto/rand.
func newToken() string {
	var b [16]byte
	rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// issue makes a new token for c, replacing its previous one.
func (t *resumeTable) issue(c *connection) string {
	tok := newToken()
	t.register(tok, c)
	return tok
}

// register makes tok c's token, replacing its previous one.
func (t *resumeTable) register(tok string, c *connection) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.byToken == nil {
		t.byToken, t.tokenOf = map[string]*connection{}, map[*connection]string{}
	}
	if old, ok := t.tokenOf[c]; ok {
		delete(t.byToken, old)
	}
	t.byToken[tok], t.tokenOf[c] = c, tok
}

// take returns the session of a token and removes the token.
func (t *resumeTable) take(tok string) *connection {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.byToken[tok]
	if c != nil {
		delete(t.byToken, tok)
		delete(t.tokenOf, c)
	}
	return c
}

// forget removes a finished connection's token.
func (t *resumeTable) forget(c *connection) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if tok, ok := t.tokenOf[c]; ok {
		delete(t.byToken, tok)
		delete(t.tokenOf, c)
	}
}

// resumeOn reports whether the handler's clients may resume.
func (h *Handler) resumeOn() bool {
	return h.Client != nil && h.Client.OnClose == "resume" && (h.Mode == "terminate" || h.Mode == "http")
}

func (h *Handler) resumeWindow() time.Duration {
	if h.Client != nil && h.Client.ResumeWindow > 0 {
		return time.Duration(h.Client.ResumeWindow)
	}
	return DefaultResumeWindow
}

// resumeToken is the token of the request's resume cookie, if any.
func resumeToken(r *http.Request) string {
	c, err := r.Cookie(ResumeCookie)
	if err != nil {
		return ""
	}
	return c.Value
}

// setResumeCookie puts the session's new token on the client's answer.
func (h *Handler) setResumeCookie(out http.Header, r *http.Request, tok string) {
	ck := &http.Cookie{Name: ResumeCookie, Value: tok, Path: r.URL.Path,
		MaxAge: int(h.resumeWindow() / time.Second), HttpOnly: true,
		SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil}
	out.Add("Set-Cookie", ck.String())
}

// withoutResumeCookie removes the gateway's cookie from the Cookie headers
// the backend gets: the token is the gateway's secret.
func withoutResumeCookie(hdr http.Header) {
	vals := hdr.Values("Cookie")
	if len(vals) == 0 {
		return
	}
	hdr.Del("Cookie")
	for _, v := range vals {
		var keep []string
		for _, part := range strings.Split(v, ";") {
			name, _, _ := strings.Cut(strings.TrimSpace(part), "=")
			if name != ResumeCookie && strings.TrimSpace(part) != "" {
				keep = append(keep, strings.TrimSpace(part))
			}
		}
		if len(keep) > 0 {
			hdr.Add("Cookie", strings.Join(keep, "; "))
		}
	}
}

// applyResume sets a terminated connection's resume options and tells the
// log and the metrics what happens to c.
func (h *Handler) applyResume(cfg *terminate.Config, c *connection) {
	if !h.resumeOn() {
		return
	}
	cfg.Resume = true
	cfg.ResumeWindow = h.resumeWindow()
	cfg.ResumeBuffer = h.Client.ResumeBuffer
	cfg.OnDetach = func(reason string) {
		countResume("detached")
		h.logger.Info("websocket client detached; the session waits for it",
			zap.String("id", c.id), zap.String("reason", reason), zap.Duration("resume_window", cfg.ResumeWindow))
	}
	cfg.OnResume = func(replayed int) {
		countResume("resumed")
		h.logger.Info("websocket client resumed", zap.String("id", c.id), zap.Int("replayed", replayed))
	}
	cfg.OnExpire = func(why string) {
		countResume("expired")
		h.logger.Info("websocket detached session ended", zap.String("id", c.id), zap.String("why", why))
	}
}

// serveResume attaches the upgrade r to the session c whose token it
// carried, if r fits it (the same handler, path and mode, the session's
// subprotocol offered); ok false: serve r as a new connection. wait is as
// serveUpgrade's.
func (h *Handler) serveResume(w http.ResponseWriter, r *http.Request, c *connection) (wait func(), ok bool) {
	rs, isResumable := c.relay.(resumable)
	offered := tokens(r.Header, "Sec-WebSocket-Protocol")
	// Bound to the handler the session runs under (after a reload, its
	// successor): browsers send a host's cookies to all its ports, and
	// another site's route with the same path must not take the session.
	if !isResumable || h.hub.ownerOf(c) != h || c.path != r.URL.Path || c.mode != h.mode().name() ||
		(c.subprotocol != "" && !slices.Contains(offered, c.subprotocol)) {
		return noWait, false
	}
	start := time.Now()
	if !rs.TakeOver() {
		return noWait, false // the session ended, or cannot be resumed exactly
	}
	extended := upgrade.IsExtendedConnect(r)
	out := w.Header()
	if !extended {
		out.Set("Upgrade", "websocket")
		out.Set("Connection", "Upgrade")
		out.Set("Sec-WebSocket-Accept", upgrade.AcceptKey(r.Header.Get("Sec-WebSocket-Key")))
	}
	if c.subprotocol != "" {
		out.Set("Sec-WebSocket-Protocol", c.subprotocol)
	}
	deflate := h.Compression != "off" && terminate.OffersDeflate(r.Header)
	if deflate {
		out.Set("Sec-WebSocket-Extensions", terminate.DeflateResponse)
	}
	h.setResumeCookie(out, r, h.hub.resume.issue(c))
	if h.Client.Announce {
		p, _ := c.policies()
		h.announce(out, p)
	}
	client, fromClient, wait, err := h.takeOver(w, r, extended)
	if err != nil {
		h.logger.Error("websocket hijack failed", zap.Error(err), zap.String("path", r.URL.Path))
		return noWait, true
	}
	countUpgrade(protoName(r), "resumed")
	if err := rs.Attach(client, fromClient, deflate); err != nil {
		h.logger.Warn("websocket resume failed", zap.String("id", c.id), zap.Error(err))
		client.Close()
		return wait, true
	}
	h.logger.Debug("websocket resume attached", zap.String("id", c.id), zap.Duration("took", time.Since(start)))
	return wait, true
}

// detachedView is what the admin list says of a session waiting for its
// client.
func detachedView(c *connection, now time.Time) (bool, float64) {
	rs, ok := c.relay.(resumable)
	if !ok {
		return false, 0
	}
	d, until := rs.Detached()
	if !d {
		return false, 0
	}
	left, _ := strconv.ParseFloat(fmt.Sprintf("%.1f", max(until.Sub(now), 0).Seconds()), 64)
	return true, left
}
