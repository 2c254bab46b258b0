package websocket

import (
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-websocket/caddy-websocket/internal/frame"
	"github.com/caddy-websocket/caddy-websocket/internal/timeout"
)

// hubs holds the one connection hub of the process. It lives in a
// caddy.UsagePool so that it outlives any single config: a reload provisions
// the new config (one more user) before cleaning up the old one (one fewer),
// and the hub with its live connections carries on; it is destroyed, closing
// every connection with 1001, only when the last config that used it goes.
var hubs = caddy.NewUsagePool()

const hubKey = "websocket.hub"

// hub owns the live connections, and what the gateway learned, across
// config reloads. Its own lock guards the connections and the handlers
// they may move between on a reload; every other table has a lock of its
// own, in the file of its concern.
type hub struct {
	mu       sync.Mutex
	conns    map[string]*connection
	handlers []*Handler // provisioned and not yet cleaned up, newest last
	// drainWindow is how long a stop spreads its closes over; draining is
	// set once it started.
	drainWindow time.Duration
	draining    atomic.Bool

	limits   limits             // max_connections, max_connections_per_ip (limits.go)
	learning learning           // learned idle timeouts (policy.go)
	health   table[hostHealth]  // upstream health (health.go)
	loads    table[loadCounter] // least_conn counts (upstreams.go)
	channels channelTable       // push API subscriptions (channels.go)
	resume   resumeTable        // resume tokens (resume.go)
	probes   probes             // discovery probes (probe.go)
	sharing  sharing            // learned values through Caddy's storage (shared.go)
}

func loadHub() (*hub, error) {
	v, _, err := hubs.LoadOrNew(hubKey, func() (caddy.Destructor, error) {
		return &hub{
			conns:    make(map[string]*connection),
			learning: learning{networks: timeout.Networks{Limit: 4096}},
		}, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*hub), nil
}

func releaseHub() error {
	_, err := hubs.Delete(hubKey)
	return err
}

// newID returns a connection id: 64 random bits, so ids from different
// Caddy instances can share one log without clashing.
func newID() string {
	const hex = "0123456789abcdef"
	var b [16]byte
	v := rand.Uint64()
	for i := len(b) - 1; i >= 0; i-- {
		b[i] = hex[v&15]
		v >>= 4
	}
	return string(b[:])
}

// add registers a connection under its id.
func (hb *hub) add(c *connection) {
	hb.mu.Lock()
	hb.conns[c.id] = c
	if c.pushable() {
		busSubscribe(connTopic(c.id)) // pushes from any instance of the fleet
	}
	hb.mu.Unlock()
}

// get returns a live connection by id.
func (hb *hub) get(id string) *connection {
	hb.mu.Lock()
	defer hb.mu.Unlock()
	return hb.conns[id]
}

// snapshot returns the live connections. Only the pointers are copied
// under the lock; callers read each connection's state without it.
func (hb *hub) snapshot() []*connection {
	hb.mu.Lock()
	out := make([]*connection, 0, len(hb.conns))
	for _, c := range hb.conns {
		out = append(out, c)
	}
	hb.mu.Unlock()
	return out
}

// learnedTimeouts returns what was learned per upstream.
func (hb *hub) learnedTimeouts() map[string]time.Duration {
	ls := hb.learning.learners.all()
	out := make(map[string]time.Duration, len(ls))
	for k, l := range ls {
		if t, _ := l.Learned(); t > 0 {
			out[k] = t
		}
	}
	return out
}

// table is the shape of the hub's per-upstream tables: a lock of its own
// and a record per key, made on first use.
type table[V any] struct {
	mu sync.Mutex
	m  map[string]*V
}

// of returns key's record, made on first use.
func (t *table[V]) of(key string) *V {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = make(map[string]*V)
	}
	v := t.m[key]
	if v == nil {
		v = new(V)
		t.m[key] = v
	}
	return v
}

// all returns a copy of the key → record map, so that callers read the
// records without the table's lock.
func (t *table[V]) all() map[string]*V {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]*V, len(t.m))
	for k, v := range t.m {
		out[k] = v
	}
	return out
}

// currentHub returns the process's hub, or nil while no config with a
// websocket handler is loaded (the admin API and metrics then have nothing
// to show).
func currentHub() *hub {
	var hb *hub
	hubs.Range(func(_, v any) bool {
		hb = v.(*hub)
		return false
	})
	return hb
}

func (hb *hub) remove(id string) {
	hb.mu.Lock()
	c := hb.conns[id]
	delete(hb.conns, id)
	if c != nil && c.pushable() {
		busUnsubscribe(connTopic(id))
	}
	hb.mu.Unlock()
	if c == nil {
		return
	}
	hb.channels.unsubscribeAll(c)
	hb.resume.forget(c)
	hb.limits.release(c.reservedIP)
	if c.lifetime != nil {
		c.lifetime.Stop()
	}
}

// ownerOf returns the handler whose config a connection runs under.
func (hb *hub) ownerOf(c *connection) *Handler {
	hb.mu.Lock()
	defer hb.mu.Unlock()
	return c.owner
}

// register notes a newly provisioned handler: connections of a retiring
// config may move to it.
func (hb *hub) register(h *Handler) {
	hb.mu.Lock()
	hb.handlers = append(hb.handlers, h)
	// The newest config's window is the one a stop drains over.
	hb.drainWindow = h.DrainWindow.or(DefaultDrainWindow)
	hb.mu.Unlock()
}

// retire moves the connections of a handler being cleaned up to the newest
// handler that serves the same upstream in the same mode, under its
// policies; the others are closed with 1012 after the reload delay. On a
// Caddy stop there is no successor, and Destruct closes everything first.
func (hb *hub) retire(h *Handler) {
	hb.mu.Lock()
	hb.handlers = slices.DeleteFunc(hb.handlers, func(x *Handler) bool { return x == h })
	var moved, orphaned []*connection
	var reasons []string
	for _, c := range hb.conns {
		if c.owner != h {
			continue
		}
		if s := hb.successorLocked(c); s != nil {
			c.owner = s
			moved = append(moved, c)
		} else {
			orphaned = append(orphaned, c)
			reasons = append(reasons, hb.orphanReasonLocked(c))
		}
	}
	hb.mu.Unlock()
	for _, c := range moved {
		c.relay.SetPolicy(c.policies())
	}
	delay := time.Duration(h.ReloadCloseDelay)
	if delay <= 0 {
		delay = DefaultReloadCloseDelay
	}
	for i, c := range orphaned {
		reason := reasons[i]
		time.AfterFunc(jitter(delay, 0, 0.5), func() {
			c.relay.Close(frame.CloseServiceRestart, reason)
		})
	}
	if len(moved)+len(orphaned) > 0 {
		h.logger.Info("websocket connections handed over on reload",
			zap.Int("kept", len(moved)), zap.Int("closing", len(orphaned)), zap.Duration("close_delay", delay))
	}
}

// orphanReasonLocked is the Close reason of a connection that no handler
// of the new config takes: its upstream is gone, or served in another mode
// (a connection can't change mode: the handshake is done).
func (hb *hub) orphanReasonLocked(c *connection) string {
	for i := len(hb.handlers) - 1; i >= 0; i-- {
		if s := hb.handlers[i]; s.hasUpstream(c.upstream()) {
			return "upstream now served in " + s.mode().name() + " mode; reconnect"
		}
	}
	return "upstream removed from the configuration"
}

// successorLocked is the newest handler that serves c's upstream in c's
// mode; the caller holds h.mu.
func (hb *hub) successorLocked(c *connection) *Handler {
	for i := len(hb.handlers) - 1; i >= 0; i-- {
		s := hb.handlers[i]
		if s.mode().name() == c.mode && s.hasUpstream(c.upstream()) {
			return s
		}
	}
	return nil
}

// refreshPolicies re-applies the owners' policies (with what was learned)
// to the connections match selects.
func (hb *hub) refreshPolicies(match func(*connection) bool) {
	hb.mu.Lock()
	var sel []*connection
	for _, c := range hb.conns {
		if match(c) {
			sel = append(sel, c)
		}
	}
	hb.mu.Unlock()
	for _, c := range sel {
		c.relay.SetPolicy(c.policies())
	}
}

// policies are the connection's policies under its owner.
func (c *connection) policies() (client, backend timeout.Policy) {
	p := c.owner.hub.ownerOf(c).policyFor(upstream{raw: c.upstream()}, c.remote)
	return p.Client, p.Backend
}

// drainSlotMax bounds the share of the drain window one connection takes.
const drainSlotMax = 50 * time.Millisecond

// jitter returns d scaled by a random factor in [1+lo, 1+hi].
func jitter(d time.Duration, lo, hi float64) time.Duration {
	return time.Duration(float64(d) * (1 + lo + rand.Float64()*(hi-lo)))
}

// Destruct closes every live connection with 1001: Caddy is stopping.
// The closes are spread at random over the drain window, so that the
// clients' reconnects reach the remaining instances spread out too, not in
// one burst; Destruct returns once they are all closed (or the window and
// a close grace period are over), within Caddy's own shutdown.
func (hb *hub) Destruct() error {
	hb.stopSharing()
	hb.mu.Lock()
	all := make([]*connection, 0, len(hb.conns))
	for _, c := range hb.conns {
		all = append(all, c)
	}
	window := hb.drainWindow
	hb.draining.Store(true)
	hb.mu.Unlock()
	if window <= 0 || len(all) < 2 {
		for _, c := range all {
			c.relay.Close(frame.CloseGoingAway, "server shutting down")
			countDrained()
		}
		return nil
	}
	// A handful of connections make no storm: no need to hold the stop
	// for the whole window.
	window = min(window, time.Duration(len(all))*drainSlotMax)
	start := time.Now()
	rand.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
	for i, c := range all {
		// Evenly spaced, each moved by up to half a slot, so the order is
		// random and the rate flat.
		slot := window / time.Duration(len(all))
		at := time.Duration(i)*slot + time.Duration(rand.Int64N(int64(slot)+1)) - slot/2
		if d := time.Until(start.Add(at)); d > 0 {
			time.Sleep(d)
		}
		c.relay.Close(frame.CloseGoingAway, "server shutting down")
		countDrained()
	}
	// Give the last ones their closing handshake.
	for end := time.Now().Add(DefaultCloseGrace); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		hb.mu.Lock()
		n := len(hb.conns)
		hb.mu.Unlock()
		if n == 0 {
			break
		}
	}
	return nil
}
