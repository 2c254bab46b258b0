package websocket

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-websocket/caddy-websocket/frame"
)

// hubs holds the one connection hub of the process. It lives in a
// caddy.UsagePool so that it outlives any single config: a reload provisions
// the new config (one more user) before cleaning up the old one (one fewer),
// and the hub with its live connections carries on; it is destroyed, closing
// every connection with 1001, only when the last config that used it goes.
var hubs = caddy.NewUsagePool()

const hubKey = "websocket.hub"

// hub owns the live connections.
type hub struct {
	mu    sync.Mutex
	conns map[string]*live
}

// relay is a running connection of either mode.
type relay interface {
	Close(code int, reason string)
}

// live is a connection the hub owns.
type live struct {
	id       string
	mode     string
	relay    relay
	upstream string
	path     string
	remote   string
	start    time.Time
}

func loadHub() (*hub, error) {
	v, _, err := hubs.LoadOrNew(hubKey, func() (caddy.Destructor, error) {
		return &hub{conns: make(map[string]*live)}, nil
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

// add registers a connection under a fresh id.
func (h *hub) add(c *live) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for {
		c.id = fmt.Sprintf("%016x", rand.Uint64())
		if _, dup := h.conns[c.id]; !dup {
			break
		}
	}
	h.conns[c.id] = c
}

func (h *hub) remove(id string) {
	h.mu.Lock()
	delete(h.conns, id)
	h.mu.Unlock()
}

// Destruct closes every live connection with 1001: Caddy is stopping.
func (h *hub) Destruct() error {
	h.mu.Lock()
	all := make([]*live, 0, len(h.conns))
	for _, c := range h.conns {
		all = append(all, c)
	}
	h.mu.Unlock()
	for _, c := range all {
		c.relay.Close(frame.CloseGoingAway, "server shutting down")
	}
	return nil
}
