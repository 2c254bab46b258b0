package websocket

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"
)

// LoadBalancing picks the upstream of each connection, with the names and
// meaning of reverse_proxy's load_balancing.
type LoadBalancing struct {
	// SelectionPolicyRaw is a http.reverse_proxy.selection_policies
	// module: random, random_choose, least_conn, round_robin,
	// weighted_round_robin, first, ip_hash, client_ip_hash, uri_hash,
	// query, header, cookie. Caddy's own modules make the choice;
	// least_conn counts the upstream's live WebSockets and handshakes
	// under way (reverse_proxy's request counters are its own). Default:
	// first.
	SelectionPolicyRaw json.RawMessage `json:"selection_policy,omitempty" caddy:"namespace=http.reverse_proxy.selection_policies inline_key=policy"`

	// Retries is how many more upstreams are tried after one cannot be
	// dialled or fails the handshake with a dial-level error. Default:
	// every upstream once.
	Retries int `json:"retries,omitempty"`

	// TryDuration keeps retrying, every TryInterval, for this long after
	// the first attempt, upstreams that failed included (a backend that is
	// restarting). Default 0: no waiting.
	TryDuration caddy.Duration `json:"try_duration,omitempty"`

	// TryInterval is the wait between retries within TryDuration.
	// Default 250ms.
	TryInterval caddy.Duration `json:"try_interval,omitempty"`
}

// upstreamPool is what the handler dials from.
type upstreamPool struct {
	static    []upstream                  // parsed To entries without placeholders
	templated []string                    // To entries with placeholders, resolved per request
	dynamic   reverseproxy.UpstreamSource // nil without dynamic upstreams
	selector  reverseproxy.Selector
	leastConn bool // the selector is least_conn: count live WebSockets
	tls       bool // the handler's TLS applies to host:port upstreams
}

// parse reads an upstream address; the handler's TLS settings make a
// host:port upstream a TLS one.
func (p *upstreamPool) parse(addr string) (upstream, error) {
	u, err := parseUpstream(addr)
	u.tls = u.tls || p.tls && u.network == "tcp"
	return u, err
}

// candidates returns the upstreams a request may go to: the static ones,
// the templated ones with the request's placeholders filled in, and the
// dynamic source's.
func (h *Handler) candidates(r *http.Request) ([]upstream, *refusal) {
	p := &h.pool
	out := append([]upstream(nil), p.static...)
	if len(p.templated) > 0 {
		repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
		for _, t := range p.templated {
			addr := t
			if repl != nil {
				addr = repl.ReplaceAll(t, "")
			}
			u, err := p.parse(addr)
			if err != nil {
				return nil, &refusal{status: http.StatusBadGateway, code: "backend_unreachable",
					reason: fmt.Sprintf("upstream %s resolved to %q: %v", t, addr, err)}
			}
			out = append(out, u)
		}
	}
	if p.dynamic != nil {
		ups, err := p.dynamic.GetUpstreams(r)
		if err != nil {
			h.logger.Warn("websocket dynamic upstreams failed", zap.Error(err))
		}
		for _, du := range ups {
			u, err := p.parse(du.Dial)
			if err != nil {
				continue
			}
			out = append(out, u)
		}
	}
	if len(out) == 0 {
		return nil, &refusal{status: http.StatusBadGateway, code: "backend_unreachable", reason: "no upstreams available"}
	}
	return out, nil
}

// choose picks one of avail (none tried yet, all healthy) with the
// selection policy, or nil when the policy finds none available.
func (h *Handler) choose(avail []upstream, r *http.Request, w http.ResponseWriter) *upstream {
	if len(avail) == 0 {
		return nil
	}
	if h.pool.leastConn {
		return h.leastConn(avail)
	}
	pool := make(reverseproxy.UpstreamPool, len(avail))
	for i := range avail {
		pool[i] = &reverseproxy.Upstream{Host: new(reverseproxy.Host), Dial: avail[i].raw}
	}
	picked := h.pool.selector.Select(pool, r, w)
	for i := range pool {
		if pool[i] == picked {
			return &avail[i]
		}
	}
	return nil
}

// leastConn is least_conn over live WebSockets: the upstream with the
// fewest connections and handshakes under way, ties broken at random.
func (h *Handler) leastConn(avail []upstream) *upstream {
	var best *upstream
	least, ties := int64(-1), 0
	for i := range avail {
		n := h.hub.loads.of(avail[i].raw).Load()
		switch {
		case least < 0 || n < least:
			best, least, ties = &avail[i], n, 1
		case n == least:
			ties++
			if rand.IntN(ties) == 0 {
				best = &avail[i]
			}
		}
	}
	return best
}

// count counts a connection (or a handshake under way) against upstream
// raw for least_conn until release, which may be called more than once.
func countLoad(t *table[loadCounter], raw string) (release func()) {
	load := t.of(raw)
	load.Add(1)
	return sync.OnceFunc(func() { load.Add(-1) })
}

// noHealthyBackend is the refusal when no upstream of all was left to try.
func noHealthyBackend(all []upstream) *refusal {
	return &refusal{status: http.StatusBadGateway, code: "backend_unreachable",
		reason: "no healthy backend (" + strings.Join(rawOf(all), ", ") + ")"}
}

func rawOf(us []upstream) []string {
	out := make([]string, len(us))
	for i, u := range us {
		out[i] = u.raw
	}
	return out
}

// redialTries is how a reconnect goes through upstreams: the one the
// connection had, then the other healthy static ones, each once. (The
// selection policy may need the client's request, which a long-lived
// connection does not keep.)
func (h *Handler) redialTries(prev upstream) tries {
	order := []upstream{prev}
	for _, u := range h.pool.static {
		if u.raw != prev.raw && h.healthy(u.raw) {
			order = append(order, u)
		}
	}
	return tries{
		next: func(tried map[string]bool) (*upstream, func()) {
			for _, u := range order {
				if !tried[u.raw] {
					tried[u.raw] = true
					return &u, func() {}
				}
			}
			return nil, nil
		},
		retries: len(order) - 1,
	}
}

// loadUpstreams sets up the pool at provisioning.
func (h *Handler) loadUpstreams(ctx caddy.Context) error {
	h.pool = upstreamPool{tls: h.TLS != nil}
	for _, a := range h.To {
		if strings.Contains(a, "{") {
			h.pool.templated = append(h.pool.templated, a)
			continue
		}
		u, err := h.pool.parse(a)
		if err != nil {
			return err
		}
		h.pool.static = append(h.pool.static, u)
	}
	if h.DynamicUpstreamsRaw != nil {
		mod, err := ctx.LoadModule(h, "DynamicUpstreamsRaw")
		if err != nil {
			return fmt.Errorf("websocket: dynamic upstreams: %v", err)
		}
		h.pool.dynamic = mod.(reverseproxy.UpstreamSource)
	}
	lb := h.LoadBalancing
	if lb != nil && lb.SelectionPolicyRaw != nil {
		mod, err := ctx.LoadModule(lb, "SelectionPolicyRaw")
		if err != nil {
			return fmt.Errorf("websocket: selection policy: %v", err)
		}
		h.pool.selector = mod.(reverseproxy.Selector)
	} else {
		h.pool.selector = reverseproxy.FirstSelection{}
	}
	_, h.pool.leastConn = h.pool.selector.(*reverseproxy.LeastConnSelection)
	return nil
}

// hasUpstream reports whether the handler may send a connection to the
// upstream raw: it is configured, or comes from placeholders or a dynamic
// source (which may yield it again).
func (h *Handler) hasUpstream(raw string) bool {
	if len(h.pool.templated) > 0 || h.pool.dynamic != nil {
		return true
	}
	for _, u := range h.pool.static {
		if u.raw == raw {
			return true
		}
	}
	return false
}

// loadCounter counts one upstream's live WebSockets and handshakes under
// way, for least_conn.
type loadCounter = atomic.Int64

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
