package websocket

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-websocket/caddy-websocket/internal/frame"
	"github.com/caddy-websocket/caddy-websocket/internal/relay"
	"github.com/caddy-websocket/caddy-websocket/internal/timeout"
)

func init() {
	caddy.RegisterModule(AdminAPI{})
}

//go:embed admin.html
var adminPage []byte

// AdminAPI is Caddy module admin.api.websocket: the gateway's live
// connections and what it learned, on Caddy's admin endpoint.
//
//	GET    /websocket/                    a live page (connection table, sparkline)
//	GET    /websocket/connections         live connections (?limit=100&after=<id>)
//	GET    /websocket/connections/{id}    one connection
//	DELETE /websocket/connections/{id}    close it (?code=1008&reason=...)
//	GET    /websocket/upstreams           learned idle timeouts
type AdminAPI struct{}

// CaddyModule returns the Caddy module information.
func (AdminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.websocket",
		New: func() caddy.Module { return new(AdminAPI) },
	}
}

// Routes returns the admin routes.
func (a AdminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: "/websocket/", Handler: caddy.AdminHandlerFunc(a.serve)}}
}

func (a AdminAPI) serve(w http.ResponseWriter, r *http.Request) error {
	return serveStatus(w, r, strings.TrimPrefix(r.URL.Path, "/websocket/"))
}

// serveStatus answers the status routes, rest being the path below the
// status root: "" (the page), "connections", "connections/{id}",
// "upstreams", and the push API's (push.go).
func serveStatus(w http.ResponseWriter, r *http.Request, rest string) error {
	var a AdminAPI
	if ok, err := pushRoute(w, r, rest); ok {
		return err
	}
	switch {
	case rest == "" && r.Method == http.MethodGet:
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'")
		_, err := w.Write(adminPage)
		return err
	case rest == "connections" && r.Method == http.MethodGet:
		return a.list(w, r)
	case strings.HasPrefix(rest, "connections/"):
		id := strings.TrimPrefix(rest, "connections/")
		c := findLive(id)
		if c == nil {
			return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("no live connection %q", id)}
		}
		switch r.Method {
		case http.MethodGet:
			return writeJSON(w, c.view(time.Now()))
		case http.MethodDelete:
			return a.close(w, r, c)
		}
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("use GET or DELETE")}
	case rest == "upstreams" && r.Method == http.MethodGet:
		return writeJSON(w, learnedView())
	}
	return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("no such websocket admin route: %s %s", r.Method, r.URL.Path)}
}

func findLive(id string) *connection {
	if hb := currentHub(); hb != nil {
		return hb.get(id)
	}
	return nil
}

// list pages through the live connections in id order. The hub's lock is
// held only to copy pointers; each connection is read without it.
func (a AdminAPI) list(w http.ResponseWriter, r *http.Request) error {
	limit := 100
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 || n > 10000 {
			return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf("limit: want 1 to 10000")}
		}
		limit = n
	}
	after := r.URL.Query().Get("after")
	var all []*connection
	if hb := currentHub(); hb != nil {
		all = append(all, hb.snapshot()...)
	}
	slices.SortFunc(all, func(a, b *connection) int { return strings.Compare(a.id, b.id) })
	start, _ := slices.BinarySearchFunc(all, after, func(c *connection, id string) int {
		if c.id <= id {
			return -1
		}
		return 1
	})
	if after == "" {
		start = 0
	}
	page := all[start:]
	next := ""
	if len(page) > limit {
		page = page[:limit]
		next = page[limit-1].id
	}
	now := time.Now()
	out := struct {
		Total       int        `json:"total"`
		Draining    bool       `json:"draining,omitempty"` // a stop is closing them over its drain window
		Connections []connView `json:"connections"`
		Next        string     `json:"next,omitempty"`
	}{Total: len(all), Draining: anyDraining(), Connections: make([]connView, 0, len(page)), Next: next}
	for _, c := range page {
		out.Connections = append(out.Connections, c.view(now))
	}
	return writeJSON(w, out)
}

func anyDraining() bool {
	d := false
	if hb := currentHub(); hb != nil {
		d = d || hb.draining.Load()
	}
	return d
}

// close ends a connection cleanly with the given code and reason.
func (a AdminAPI) close(w http.ResponseWriter, r *http.Request, c *connection) error {
	code := frame.ClosePolicyViolation
	if v := r.URL.Query().Get("code"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || !frame.ValidCloseCode(frame.StatusCode(n)) {
			return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf("code %q: want a Close code that may be sent (1000-1003, 1007-1014, 3000-4999)", v)}
		}
		code = frame.StatusCode(n)
	}
	reason := r.URL.Query().Get("reason")
	if reason == "" {
		reason = "closed by the administrator"
	}
	if len(reason) > frame.MaxCloseReason {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf("reason: at most %d bytes", frame.MaxCloseReason)}
	}
	c.relay.Close(code, reason)
	c.owner.logger.Info("websocket close requested through the admin API",
		zap.String("id", c.id), zap.Int("code", int(code)), zap.String("reason", reason))
	return writeJSON(w, map[string]any{"id": c.id, "code": code, "reason": reason})
}

// leg returns the view of one side.
func (v *connView) leg(s relay.Side) *legView {
	if s == relay.Client {
		return &v.ClientLeg
	}
	return &v.BackendLeg
}

// connView is a connection as the admin API shows it.
type connView struct {
	ID          string  `json:"id"`
	Mode        string  `json:"mode"`
	Proto       string  `json:"proto"`
	Route       string  `json:"route"`
	Client      string  `json:"client"`
	Upstream    string  `json:"upstream"`
	Started     string  `json:"started"`
	AgeSeconds  float64 `json:"age_seconds"`
	Subprotocol string  `json:"subprotocol,omitempty"`
	Extensions  string  `json:"extensions,omitempty"` // negotiated with the client (Sec-WebSocket-Extensions)
	Reconnects  int     `json:"reconnects"`
	// Detached: the client vanished and the session waits for it to
	// resume, for ResumeLeftSeconds more.
	Detached          bool    `json:"detached,omitempty"`
	ResumeLeftSeconds float64 `json:"resume_left_seconds,omitempty"`
	ClientLeg         legView `json:"client_leg"`
	BackendLeg        legView `json:"backend_leg"`
}

// legView is one side: what it sent, the gateway's pings to it, and what
// its policy does next.
type legView struct {
	Bytes            int64    `json:"bytes"`
	Messages         int64    `json:"messages"`
	Pings            int64    `json:"pings"`
	Pongs            int64    `json:"pongs"`
	RTTMillis        float64  `json:"rtt_ms"`
	LastReadSeconds  float64  `json:"last_read_seconds_ago"`
	LastWriteSeconds float64  `json:"last_write_seconds_ago"`
	NextEvent        string   `json:"next_event,omitempty"`
	NextInSeconds    *float64 `json:"next_event_in_seconds,omitempty"`
	Keepalive        float64  `json:"keepalive_seconds"`
}

func (c *connection) view(now time.Time) connView {
	st := c.relay.Stats()
	v := connView{
		ID: c.id, Mode: c.mode, Proto: c.proto, Route: c.path, Client: c.remote, Upstream: c.upstream(),
		Started: c.start.UTC().Format(time.RFC3339), AgeSeconds: now.Sub(c.start).Seconds(),
		Subprotocol: c.subprotocol, Extensions: c.extensions, Reconnects: st.Reconnects,
	}
	v.Detached, v.ResumeLeftSeconds = detachedView(c, now)
	var pol relay.PerSide[timeout.Policy]
	pol.Client, pol.Backend = c.policies()
	for _, side := range []relay.Side{relay.Client, relay.Backend} {
		l, lv := st.Legs.Of(side), v.leg(side)
		*lv = legView{
			Bytes: l.Bytes, Messages: l.Messages, Pings: l.Pings, Pongs: l.Pongs,
			RTTMillis: float64(l.RTT) / float64(time.Millisecond), Keepalive: pol.Of(side).Keepalive.Seconds(),
			LastReadSeconds: now.Sub(l.LastRead).Seconds(), LastWriteSeconds: now.Sub(l.LastWrite).Seconds(),
		}
		if !l.Next.IsZero() {
			in := l.Next.Sub(now).Seconds()
			lv.NextEvent, lv.NextInSeconds = l.NextAction.String(), &in
		}
	}
	return v
}

// learnedView lists what the gateway learned about idle timeouts.
func learnedView() any {
	type upView struct {
		Upstream           string  `json:"upstream"`
		IdleTimeoutSeconds float64 `json:"learned_idle_timeout_seconds"`
		Drops              int     `json:"drops_seen"`
		Open               int     `json:"open_connections"`
		Healthy            bool    `json:"healthy"`
		HealthReason       string  `json:"health_reason,omitempty"` // the last failure
	}
	type netView struct {
		Network            string  `json:"network"`
		IdleTimeoutSeconds float64 `json:"learned_idle_timeout_seconds"`
		Drops              int     `json:"drops_seen"`
	}
	out := struct {
		Upstreams []upView  `json:"upstreams"`
		Networks  []netView `json:"client_networks"`
	}{Upstreams: []upView{}, Networks: []netView{}}
	if hb := currentHub(); hb != nil {
		open := map[string]int{}
		for _, c := range hb.snapshot() {
			open[c.upstream()]++
		}
		for up, l := range hb.learning.learners.all() {
			t, n := l.Learned()
			out.Upstreams = append(out.Upstreams, upView{Upstream: up, IdleTimeoutSeconds: t.Seconds(), Drops: n, Open: open[up]})
			delete(open, up)
		}
		for up, n := range open {
			out.Upstreams = append(out.Upstreams, upView{Upstream: up, Open: n})
		}
		hb.learning.networks.Each(func(p netip.Prefix, l *timeout.Learner) {
			t, n := l.Learned()
			out.Networks = append(out.Networks, netView{p.String(), t.Seconds(), n})
		})
	}
	if hb := currentHub(); hb != nil {
		health := healthSnapshot(&hb.health)
		seen := map[string]bool{}
		for i := range out.Upstreams {
			u := &out.Upstreams[i]
			seen[u.Upstream] = true
			u.Healthy = true
			if s, ok := health[u.Upstream]; ok {
				u.Healthy, u.HealthReason = !s.down, s.reason
			}
		}
		for up, s := range health {
			if !seen[up] {
				out.Upstreams = append(out.Upstreams, upView{Upstream: up, Healthy: !s.down, HealthReason: s.reason})
			}
		}
	}
	slices.SortFunc(out.Upstreams, func(a, b upView) int { return strings.Compare(a.Upstream, b.Upstream) })
	slices.SortFunc(out.Networks, func(a, b netView) int { return strings.Compare(a.Network, b.Network) })
	return out
}

func writeJSON(w http.ResponseWriter, v any) error {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// Interface guard
var _ caddy.AdminRouter = AdminAPI{}
