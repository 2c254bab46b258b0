package websocket

import (
	"fmt"
	"net/http"
	"net/netip"
	"sync"
)

// limits counts the live connections and handshakes under way, in all and
// per client address, for max_connections and max_connections_per_ip.
type limits struct {
	mu    sync.Mutex
	total int
	perIP map[netip.Addr]int
}

// reserve counts a new connection from ip against the limits (0: none)
// before its handshake starts; release undoes it if the upgrade fails, and
// remove when the connection ends.
func (l *limits) reserve(ip netip.Addr, maxTotal, maxPerIP int) (release func(), _ *refusal) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if maxTotal > 0 && l.total >= maxTotal {
		return nil, &refusal{status: http.StatusServiceUnavailable, code: "max_connections",
			reason: fmt.Sprintf("too many WebSocket connections (limit %d); try again later", maxTotal)}
	}
	if maxPerIP > 0 && l.perIP[ip] >= maxPerIP {
		return nil, &refusal{status: http.StatusServiceUnavailable, code: "max_connections_per_ip",
			reason: fmt.Sprintf("too many WebSocket connections from %s (limit %d); try again later", ip, maxPerIP)}
	}
	l.total++
	if l.perIP == nil {
		l.perIP = make(map[netip.Addr]int)
	}
	l.perIP[ip]++
	return func() { l.release(ip) }, nil
}

func (l *limits) release(ip netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if l.perIP[ip]--; l.perIP[ip] <= 0 {
		delete(l.perIP, ip)
	}
}
