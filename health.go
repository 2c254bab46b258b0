package websocket

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-websocket/caddy-websocket/internal/frame"
	"github.com/caddy-websocket/caddy-websocket/internal/overhttp"
)

// HealthChecks marks upstreams down and up, with the names and meaning of
// reverse_proxy's health_checks. An upstream that is down is skipped by
// every selection policy; when all are down, upgrades get 502.
type HealthChecks struct {
	// Active checks open a WebSocket to each upstream on a schedule.
	Active *ActiveHealthChecks `json:"active,omitempty"`
	// Passive checks count the failures of real connections.
	Passive *PassiveHealthChecks `json:"passive,omitempty"`
}

// ActiveHealthChecks speak WebSocket: a handshake on URI, then a Ping that
// must be answered with a Pong, then a Close. With mode http they speak
// WebSocket-over-HTTP: an OPEN on URI that must be accepted, then a
// DISCONNECT. Only the upstreams listed in to are checked (not
// placeholders or dynamic ones, as in reverse_proxy).
type ActiveHealthChecks struct {
	// URI is the path (and query) of the check's upgrade request. Default
	// "/".
	URI string `json:"uri,omitempty"`
	// Interval between checks of one upstream. Default 30s.
	Interval caddy.Duration `json:"interval,omitempty"`
	// Timeout bounds one check, from dial to Pong. Default 5s.
	Timeout caddy.Duration `json:"timeout,omitempty"`
	// Passes is how many checks in a row an upstream that is down must
	// pass to be up again. Default 1.
	Passes int `json:"passes,omitempty"`
	// Fails is how many checks in a row an upstream must fail to be down.
	// Default 1.
	Fails int `json:"fails,omitempty"`
}

// PassiveHealthChecks count what real connections meet: a dial that fails,
// a TLS or handshake failure, or an answer with a status listed in
// UnhealthyStatus.
type PassiveHealthChecks struct {
	// FailDuration is how long a failure counts. Default 0: passive checks
	// are off.
	FailDuration caddy.Duration `json:"fail_duration,omitempty"`
	// MaxFails is how many failures within FailDuration mark the upstream
	// down. Default 1.
	MaxFails int `json:"max_fails,omitempty"`
	// UnhealthyStatus lists backend answers (instead of 101) that count as
	// failures, e.g. 502, 503. Default none: a non-101 answer is the
	// backend's to give, and is passed to the client.
	UnhealthyStatus []int `json:"unhealthy_status,omitempty"`
}

// HealthCheckHeader marks the active checks' upgrade requests, so that a
// backend can tell them from users.
const HealthCheckHeader = "X-Websocket-Health-Check"

// hostHealth is what is known of one upstream's health. It lives in the
// hub, so it survives reloads.
type hostHealth struct {
	mu         sync.Mutex
	activeDown bool
	passes     int         // active checks passed in a row
	fails      int         // active checks failed in a row
	failTimes  []time.Time // passive failures, oldest first
	lastReason string
	down       atomic.Bool // the last verdict, for metrics and the admin view
}

// healthy reports whether the upstream may be picked under h's passive
// policy and the active checks' verdict.
func (h *Handler) healthy(raw string) bool {
	hh := h.hub.health.of(raw)
	hh.mu.Lock()
	defer hh.mu.Unlock()
	down := hh.activeDown
	if p := h.passive(); p != nil {
		cut := time.Now().Add(-time.Duration(p.FailDuration))
		i := 0
		for i < len(hh.failTimes) && hh.failTimes[i].Before(cut) {
			i++
		}
		hh.failTimes = hh.failTimes[i:]
		down = down || len(hh.failTimes) >= max(p.MaxFails, 1)
	}
	if was := hh.down.Swap(down); was && !down {
		h.logger.Info("websocket upstream healthy again", zap.String("upstream", raw))
	}
	return !down
}

func (h *Handler) passive() *PassiveHealthChecks {
	if h.HealthChecks == nil || h.HealthChecks.Passive == nil || h.HealthChecks.Passive.FailDuration <= 0 {
		return nil
	}
	return h.HealthChecks.Passive
}

// failed counts a passive failure of an upstream.
func (hb *hub) failed(h *Handler, u upstream, reason string) {
	p := h.passive()
	if p == nil {
		return
	}
	hh := hb.health.of(u.raw)
	hh.mu.Lock()
	hh.failTimes = append(hh.failTimes, time.Now())
	hh.lastReason = reason
	n := len(hh.failTimes)
	hh.mu.Unlock()
	if n == max(p.MaxFails, 1) && !hh.down.Swap(true) {
		h.logger.Warn("websocket upstream unhealthy", zap.String("upstream", u.raw), zap.String("check", "passive"),
			zap.String("reason", reason), zap.Int("fails", n), zap.Duration("fail_duration", time.Duration(p.FailDuration)))
	}
}

// unhealthyStatus reports whether a backend's answer counts as a failure.
func (h *Handler) unhealthyStatus(status int) bool {
	p := h.passive()
	return p != nil && slices.Contains(p.UnhealthyStatus, status)
}

// startActiveChecks runs the active checks of a provisioned handler until
// its config is unloaded.
func (h *Handler) startActiveChecks(ctx caddy.Context) {
	if h.HealthChecks == nil || h.HealthChecks.Active == nil {
		return
	}
	a := h.HealthChecks.Active
	interval := time.Duration(a.Interval)
	if interval <= 0 {
		interval = 30 * time.Second
	}
	go func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			for _, u := range h.pool.static {
				h.activeCheck(ctx, u)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
}

// activeCheck checks one upstream and records the verdict.
func (h *Handler) activeCheck(ctx context.Context, u upstream) {
	a := h.HealthChecks.Active
	err := h.checkHealth(ctx, u)
	hh := h.hub.health.of(u.raw)
	hh.mu.Lock()
	var changed, nowDown bool
	if err == nil {
		hh.fails = 0
		hh.passes++
		if hh.activeDown && hh.passes >= max(a.Passes, 1) {
			hh.activeDown, changed = false, true
		}
	} else {
		hh.passes = 0
		hh.fails++
		hh.lastReason = err.Error()
		if !hh.activeDown && hh.fails >= max(a.Fails, 1) {
			hh.activeDown, changed, nowDown = true, true, true
		}
	}
	hh.mu.Unlock()
	switch {
	case changed && nowDown:
		hh.down.Store(true)
		h.logger.Warn("websocket upstream unhealthy", zap.String("upstream", u.raw), zap.String("check", "active"), zap.Error(err))
	case changed:
		h.healthy(u.raw) // logs the recovery unless passive failures still count
	}
}

// checkHealth is one active check: the same dial path as a connection
// (TLS included), an upgrade to the check's URI, a Ping answered by a
// Pong, a Close.
func (h *Handler) checkHealth(ctx context.Context, u upstream) error {
	a := h.HealthChecks.Active
	timeout := time.Duration(a.Timeout)
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	uri := a.URI
	if uri == "" {
		uri = "/"
	}
	if h.Mode == "http" {
		return h.checkHealthOverHTTP(ctx, u, uri, timeout)
	}
	conn, err := h.dialOne(ctx, u)
	if err != nil {
		return fmt.Errorf("dial: %s", dialReason(err))
	}
	req, key := gatewayRequest(u, uri, HealthCheckHeader)
	b, rf := h.handshakeWith(ctx, u, key, conn, req)
	if rf != nil {
		return fmt.Errorf("handshake: %s", rf.reason)
	}
	defer b.close()
	conn, br := b.conn, b.br
	deadline, _ := ctx.Deadline()
	conn.SetDeadline(deadline)
	if b.res.StatusCode != http.StatusSwitchingProtocols {
		return fmt.Errorf("handshake: status %d", b.res.StatusCode)
	}
	payload := []byte("health check")
	if _, err := conn.Write(frame.AppendFrame(nil, frame.OpPing, payload, true, frame.NewKey(true))); err != nil {
		return err
	}
	for {
		var hb [frame.MaxHeaderSize]byte
		if _, err := io.ReadFull(br, hb[:2]); err != nil {
			return fmt.Errorf("waiting for Pong: %v", err)
		}
		n := frame.HeaderSize(hb[0], hb[1])
		if _, err := io.ReadFull(br, hb[2:n]); err != nil {
			return fmt.Errorf("waiting for Pong: %v", err)
		}
		fh, _, err := frame.ParseHeader(hb[:n])
		if err != nil || fh.Length > 1<<20 {
			return fmt.Errorf("waiting for Pong: bad frame")
		}
		p := make([]byte, fh.Length)
		if _, err := io.ReadFull(br, p); err != nil {
			return fmt.Errorf("waiting for Pong: %v", err)
		}
		switch fh.Op {
		case frame.OpPong:
			conn.Write(frame.AppendClose(nil, frame.CloseNormal, "health check done", true, frame.NewKey(true)))
			return nil
		case frame.OpClose:
			return fmt.Errorf("closed instead of answering the Ping")
		}
	}
}

// checkHealthOverHTTP is mode http's active check: an OPEN through the
// connections' own client, marked with HealthCheckHeader, that the
// backend must accept; a DISCONNECT then lets it forget the check.
func (h *Handler) checkHealthOverHTTP(ctx context.Context, u upstream, uri string, timeout time.Duration) error {
	hs := &handshake{id: "health-check-" + newID(), uri: uri, host: u.host(), hdr: http.Header{HealthCheckHeader: {"1"}}}
	cfg := h.sessionConfig(hs, u)
	cfg.Timeout, cfg.OnError = timeout, nil
	s, res, body, err := overhttp.Connect(ctx, cfg)
	if err != nil {
		return fmt.Errorf("OPEN: %v", err)
	}
	if s == nil {
		if code, reason, ok := overhttp.RefusalReason(body); ok && res.StatusCode == http.StatusOK {
			return fmt.Errorf("OPEN refused with CLOSE %d %s", code, reason)
		}
		return fmt.Errorf("OPEN refused: status %d", res.StatusCode)
	}
	s.Hangup(ctx)
	return nil
}

// healthState is one upstream's health as the admin API and metrics show
// it.
type healthState struct {
	down   bool
	reason string
}

// healthSnapshot returns the health of every upstream seen.
func healthSnapshot(t *table[hostHealth]) map[string]healthState {
	hosts := t.all()
	out := make(map[string]healthState, len(hosts))
	for k, hh := range hosts {
		hh.mu.Lock()
		out[k] = healthState{down: hh.down.Load(), reason: hh.lastReason}
		hh.mu.Unlock()
	}
	return out
}
