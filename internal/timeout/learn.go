package timeout

import (
	"net/netip"
	"sync"
	"time"
)

// Learner discovers an idle timeout nobody announces: the peer's (a
// backend's, or the NATs and proxies in front of a client network's) own.
// Each time a connection is dropped without a Close after the leg was
// silent both ways for a while, that silence is an upper bound on the
// timeout; the smallest seen is the best bound. Keepalive then pings at a
// safe fraction of it, within the bounds each caller gives.
//
// A Learner is safe for concurrent use.
type Learner struct {
	mu      sync.Mutex
	learned time.Duration // smallest idle drop seen; 0: none
	drops   int
}

// SafeFraction of a learned timeout is the keepalive interval: half leaves
// room for a ping, its pong and clock slop before the peer's timer fires.
const SafeFraction = 0.5

// Observe records a drop after silence (no frame either way for that long)
// and reports whether the learned timeout went down. Silences shorter than
// min are not idle drops (the peer was not idle long enough for any sane
// idle timeout) and teach nothing.
func (l *Learner) Observe(silence, min time.Duration) bool {
	if silence < min || silence <= 0 {
		return false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.drops++
	if l.learned == 0 || silence < l.learned {
		l.learned = silence
		return true
	}
	return false
}

// Learned returns the smallest idle drop seen (0: none) and how many were
// seen.
func (l *Learner) Learned() (time.Duration, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.learned, l.drops
}

// Interval returns the keepalive interval to use now: a safe fraction of
// the learned timeout within [min, max], or max before anything is learned.
func (l *Learner) Interval(min, max time.Duration) time.Duration {
	l.mu.Lock()
	t := l.learned
	l.mu.Unlock()
	if t == 0 {
		return max
	}
	return clamp(time.Duration(float64(t)*SafeFraction), min, max)
}

func clamp(d, lo, hi time.Duration) time.Duration {
	if d < lo {
		return lo
	}
	if hi > 0 && d > hi {
		return hi
	}
	return d
}

// Networks keeps one Learner per client network (a /24 for IPv4, a /64 for
// IPv6: the granularity at which NATs and carrier proxies usually share a
// timeout), at most Limit of them; the least recently used goes first.
type Networks struct {
	Limit int

	mu    sync.Mutex
	nets  map[netip.Prefix]*netEntry
	clock uint64
}

type netEntry struct {
	l    *Learner
	used uint64
}

// NetworkOf returns the network a client address belongs to.
func NetworkOf(ip netip.Addr) netip.Prefix {
	ip = ip.Unmap()
	bits := 64
	if ip.Is4() {
		bits = 24
	}
	p, _ := ip.Prefix(bits)
	return p
}

// For returns the Learner of ip's network, creating it if needed.
func (n *Networks) For(ip netip.Addr) *Learner { return n.ForNetwork(NetworkOf(ip)) }

// ForNetwork returns the learner of a network as NetworkOf names it (what
// another instance shared).
func (n *Networks) ForNetwork(key netip.Prefix) *Learner {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.nets == nil {
		n.nets = map[netip.Prefix]*netEntry{}
	}
	n.clock++
	if e, ok := n.nets[key]; ok {
		e.used = n.clock
		return e.l
	}
	if n.Limit > 0 && len(n.nets) >= n.Limit {
		var oldest netip.Prefix
		var min uint64
		for k, e := range n.nets {
			if min == 0 || e.used < min {
				oldest, min = k, e.used
			}
		}
		delete(n.nets, oldest)
	}
	e := &netEntry{l: &Learner{}, used: n.clock}
	n.nets[key] = e
	return e.l
}

// Each calls f for every tracked network that learned something.
func (n *Networks) Each(f func(netip.Prefix, *Learner)) {
	n.mu.Lock()
	all := make(map[netip.Prefix]*Learner, len(n.nets))
	for k, e := range n.nets {
		all[k] = e.l
	}
	n.mu.Unlock()
	for k, l := range all {
		if t, _ := l.Learned(); t > 0 {
			f(k, l)
		}
	}
}

// Len returns how many networks are tracked.
func (n *Networks) Len() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.nets)
}

// Merge takes a value learned elsewhere (another instance, an earlier run):
// the smaller bound wins, as with Observe. It reports whether the learned
// value changed.
func (l *Learner) Merge(t time.Duration) bool {
	if t <= 0 {
		return false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.learned == 0 || t < l.learned {
		l.learned = t
		return true
	}
	return false
}
