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
)

// ProbeHeader marks the discovery probe's upgrade request, so a backend can
// tell it from users (and keep it out of its own counts).
const ProbeHeader = "X-Websocket-Probe"

// probes are the discovery probes of one hub: at most one per upstream.
type probes struct {
	mu      sync.Mutex
	running map[string]bool // upstream → a probe is measuring it
	done    map[string]bool // upstream → measured (learned, or survived keepalive_max), or refused
}

// probing reports whether a probe is measuring the upstream now: its
// connections then ping the backend every keepalive_min, so that none is
// silent for longer than the probe has already been (the probe started
// first).
func (h *hub) probing(raw string) bool {
	h.probes.mu.Lock()
	defer h.probes.mu.Unlock()
	return h.probes.running[raw]
}

// probeUpstreams starts a probe of every listed upstream that has nothing
// learned and was not measured yet (Caddy start, or a reload that adds
// one). Costs: one spare connection per upstream for up to keepalive_max,
// which sends nothing; meanwhile the upstream's user connections ping it
// every keepalive_min.
func (hd *Handler) probeUpstreams() {
	if !hd.Backend.auto() || hd.Backend.Discover != "probe" {
		return
	}
	for _, u := range hd.pool.static {
		if t, _ := hd.hub.learner(u.raw).Learned(); t > 0 {
			continue
		}
		hd.hub.probes.mu.Lock()
		if hd.hub.probes.running == nil {
			hd.hub.probes.running, hd.hub.probes.done = map[string]bool{}, map[string]bool{}
		}
		start := !hd.hub.probes.running[u.raw] && !hd.hub.probes.done[u.raw]
		if start {
			hd.hub.probes.running[u.raw] = true
		}
		hd.hub.probes.mu.Unlock()
		if start {
			go hd.probe(u)
		}
	}
}

// probe opens a spare WebSocket to u through the same dial path as a user
// connection, stays silent, and measures how long the backend tolerates
// it.
func (hd *Handler) probe(u upstream) {
	b := hd.Backend.bounds()
	defer func() {
		hd.hub.probes.mu.Lock()
		delete(hd.hub.probes.running, u.raw)
		hd.hub.probes.done[u.raw] = true
		hd.hub.probes.mu.Unlock()
		hd.hub.refreshPolicies(func(o *connection) bool { return o.upstream() == u.raw })
	}()
	log := hd.logger.With(zap.String("upstream", u.raw))
	ctx := context.Background()
	conn, err := hd.dialOne(ctx, u)
	if err != nil {
		log.Warn("websocket probe could not dial; learning from drops instead", zap.Error(err))
		return
	}
	defer conn.Close()
	req, key := gatewayRequest(u, "/", ProbeHeader)
	hs := &handshake{key: key, up: u}
	if rf := hd.handshakeWith(ctx, hs, conn, req); rf != nil {
		log.Warn("websocket probe refused; learning from drops instead", zap.String("reason", rf.reason))
		return
	}
	if hs.res.StatusCode != http.StatusSwitchingProtocols {
		hs.backend.Close()
		log.Warn("websocket probe refused; learning from drops instead", zap.Int("status", hs.res.StatusCode))
		return
	}
	start := time.Now()
	log.Info("websocket probe started", zap.Duration("keepalive_max", b.max))
	// Silent until the backend hangs up or sends Close, or keepalive_max
	// has passed: then nothing needs learning.
	hs.backend.SetReadDeadline(start.Add(b.max + time.Second))
	silence, err := drainUntilClosed(hs.br)
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		log.Info("websocket probe survived keepalive_max; nothing to learn", zap.Duration("silence", time.Since(start)))
	default:
		t := time.Since(start)
		if silence > 0 {
			t = silence
		}
		l := hd.hub.learner(u.raw)
		if l.Observe(t, b.min) {
			lt, n := l.Learned()
			log.Info("websocket probe learned backend idle timeout", zap.Duration("idle_timeout", lt),
				zap.Int("drops_seen", n), zap.Duration("keepalive", l.Interval(b.min, b.max)))
			hd.hub.publish("upstream", u.raw, lt, n)
		}
	}
	hs.backend.Close()
}

// drainUntilClosed reads (and drops) what the backend sends until it hangs
// up or the deadline passes. A backend that pings the probe is not idle
// towards it; the measure is from the last thing it sent (returned as the
// silence before the end, 0 when it sent nothing).
func drainUntilClosed(r *bufio.Reader) (time.Duration, error) {
	var last time.Time
	buf := make([]byte, 512)
	for {
		_, err := r.Read(buf)
		if err == nil {
			last = time.Now()
			continue
		}
		if errors.Is(err, os.ErrDeadlineExceeded) || last.IsZero() {
			return 0, err
		}
		return time.Since(last), err
	}
}
