package websocket

import (
	"bufio"
	"context"
	"errors"
	"net/http"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-websocket/caddy-websocket/internal/frame"
	"github.com/caddy-websocket/caddy-websocket/internal/timeout"
)

// ProbeHeader marks the discovery probe's upgrade request, so a backend can
// tell it from users (and keep it out of its own counts).
const ProbeHeader = "X-Websocket-Probe"

// probes are the discovery probes of one hub: at most one per upstream.
type probes struct {
	mu    sync.Mutex
	state map[string]probeState // upstream → where its probe stands
}

type probeState uint8

const (
	probeRunning probeState = iota + 1
	// probeProven: the probe learned a timeout, or survived keepalive_max
	// (nothing to learn).
	probeProven
	// probeUnproven: the probe ended without a result (refused, dial
	// error, a drop it could not read): nothing is known to be safe but
	// keepalive_min until something is learned.
	probeUnproven
)

// unproven reports whether an upstream's users must ping it every
// keepalive_min until something is learned: its probe is measuring it now
// (the users must stay inside what the probe, silent longest, has proven),
// or it ended without a result. Scheduling them at keepalive_max then
// would be less safe than not probing at all.
func (hb *hub) unproven(raw string) bool {
	hb.probes.mu.Lock()
	defer hb.probes.mu.Unlock()
	st := hb.probes.state[raw]
	return st == probeRunning || st == probeUnproven
}

// probeUpstreams starts a probe of every listed upstream that has nothing
// learned and was not measured yet (Caddy start, or a reload that adds
// one; an unproven upstream is probed again at the next reload). Costs:
// one spare connection per upstream for up to keepalive_max, which sends
// nothing; meanwhile the upstream's user connections ping it every
// keepalive_min.
func (h *Handler) probeUpstreams() {
	if !h.Backend.auto() || h.Backend.Discover != "probe" {
		return
	}
	for _, u := range h.pool.static {
		if t, _ := h.hub.learning.learners.of(u.raw).Learned(); t > 0 {
			continue
		}
		h.hub.probes.mu.Lock()
		if h.hub.probes.state == nil {
			h.hub.probes.state = map[string]probeState{}
		}
		st := h.hub.probes.state[u.raw]
		start := st == 0 || st == probeUnproven
		if start {
			h.hub.probes.state[u.raw] = probeRunning
		}
		h.hub.probes.mu.Unlock()
		if start {
			go h.probe(u)
		}
	}
}

// probe opens a spare WebSocket to u through the same dial path as a user
// connection, stays silent, and measures how long the backend tolerates
// it.
func (h *Handler) probe(u upstream) {
	b := h.Backend.bounds()
	l := h.hub.learning.learners.of(u.raw)
	proven := false
	log := h.logger.With(zap.String("upstream", u.raw))
	defer func() {
		st := probeUnproven
		if t, _ := l.Learned(); proven || t > 0 {
			st = probeProven
		}
		h.hub.probes.mu.Lock()
		h.hub.probes.state[u.raw] = st
		h.hub.probes.mu.Unlock()
		if st == probeUnproven {
			log.Warn("websocket probe ended without a result; users ping every keepalive_min until a timeout is learned",
				zap.Duration("keepalive", b.min))
		}
		h.hub.refreshPolicies(func(o *connection) bool { return o.upstream() == u.raw })
	}()
	ctx := context.Background()
	conn, err := h.dialOne(ctx, u)
	if err != nil {
		log.Warn("websocket probe could not dial", zap.Error(err))
		return
	}
	// From here the connection is handshakeWith's: closed by it on a
	// refusal, and by pb.close otherwise.
	uri := h.Backend.ProbeURI
	if uri == "" {
		uri = "/"
	}
	req, key := gatewayRequest(u, uri, ProbeHeader)
	pb, rf := h.handshakeWith(ctx, u, key, conn, req)
	if rf != nil {
		log.Warn("websocket probe refused", zap.String("reason", rf.reason))
		return
	}
	defer pb.close()
	if pb.res.StatusCode != http.StatusSwitchingProtocols {
		log.Warn("websocket probe refused", zap.Int("status", pb.res.StatusCode))
		return
	}
	start := time.Now()
	log.Info("websocket probe started", zap.Duration("keepalive_max", b.max),
		zap.Duration("users_keepalive", b.min))
	// Silent until the backend hangs up or sends Close, or keepalive_max
	// has passed: then nothing needs learning.
	pb.conn.SetReadDeadline(start.Add(b.max + time.Second))
	run, err := watchUntilDropped(pb.br, start)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		proven = true
		log.Info("websocket probe survived keepalive_max; nothing to learn", zap.Duration("silence", time.Since(start)))
		return
	}
	t, rule := run.IdleTimeout(b.min)
	fields := []zap.Field{
		zap.Duration("since_probe_sent", run.End),
		zap.Duration("since_backend_sent", run.End-run.LastWrite),
		zap.Duration("longest_backend_gap", run.LongestGap),
	}
	if t == 0 {
		log.Warn("websocket probe dropped, but no reading is an idle timeout of at least keepalive_min", append(fields, zap.Duration("keepalive_min", b.min))...)
		return
	}
	l.Observe(t, b.min)
	lt, n := l.Learned()
	log.Info("websocket probe learned backend idle timeout", append(fields,
		zap.String("counts", string(rule)), zap.Duration("idle_timeout", lt),
		zap.Int("drops_seen", n), zap.Duration("keepalive", l.Interval(b.min, b.max)))...)
	h.hub.share("upstream", u.raw, lt, n)
}

// watchUntilDropped reads (and drops) the frames the backend sends the
// probe until it hangs up or the deadline passes, and returns what was
// seen, timed from start (the handshake). A chat room broadcasts its
// members' lines to the probe too: each is a write of the backend's. A
// Close frame is the backend's goodbye, not activity, and is not counted.
func watchUntilDropped(r *bufio.Reader, start time.Time) (timeout.ProbeRun, error) {
	var run timeout.ProbeRun
	for {
		h, err := nextFrame(r)
		at := time.Since(start)
		if err != nil {
			run.End = at
			return run, err
		}
		if h.Op != frame.OpClose {
			run.Wrote(at)
		}
	}
}

// nextFrame reads a frame header from r and skips its payload.
func nextFrame(r *bufio.Reader) (frame.Header, error) {
	b, err := r.Peek(2)
	if err != nil {
		return frame.Header{}, err
	}
	b, err = r.Peek(frame.HeaderSize(b[0], b[1]))
	if err != nil {
		return frame.Header{}, err
	}
	h, n, err := frame.ParseHeader(b)
	if err != nil {
		return h, err
	}
	r.Discard(n)
	_, err = r.Discard(int(h.Length))
	return h, err
}
