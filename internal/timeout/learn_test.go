package timeout

import (
	"net/netip"
	"testing"
	"time"
)

func TestLearner(t *testing.T) {
	var l Learner
	const lo, hi = time.Second, 20 * time.Second
	if got := l.Interval(lo, hi); got != 20*time.Second {
		t.Fatalf("before learning: %v", got)
	}
	if l.Observe(500*time.Millisecond, lo) {
		t.Fatal("a drop after 500ms of silence (< Min) taught something")
	}
	if !l.Observe(30*time.Second, lo) {
		t.Fatal("first idle drop not learned")
	}
	if got := l.Interval(lo, hi); got != 15*time.Second {
		t.Fatalf("after a 30s drop: %v", got)
	}
	if l.Observe(45*time.Second, lo) {
		t.Fatal("a longer silence lowered nothing but said it did")
	}
	l.Observe(2*time.Second, lo)
	if got := l.Interval(lo, hi); got != time.Second {
		t.Fatalf("after a 2s drop: %v", got)
	}
	l.Observe(1200*time.Millisecond, lo)
	if got, n := l.Learned(); got != 1200*time.Millisecond || n != 4 {
		t.Fatalf("learned %v from %d drops", got, n)
	}
	if got := l.Interval(lo, hi); got != time.Second {
		t.Fatalf("Min bound: %v", got)
	}
}

func TestNetworks(t *testing.T) {
	n := Networks{Limit: 2}
	a := n.For(netip.MustParseAddr("192.0.2.10"))
	if n.For(netip.MustParseAddr("192.0.2.200")) != a {
		t.Fatal("same /24, different learners")
	}
	if n.For(netip.MustParseAddr("::ffff:192.0.2.7")) != a {
		t.Fatal("IPv4-mapped address not in its /24")
	}
	a.Observe(10*time.Second, time.Second)
	b := n.For(netip.MustParseAddr("2001:db8::1"))
	if b == a || n.For(netip.MustParseAddr("2001:db8::ffff")) != b {
		t.Fatal("/64 grouping")
	}
	n.For(netip.MustParseAddr("192.0.2.1")) // a is now the most recent
	n.For(netip.MustParseAddr("198.51.100.1"))
	if n.Len() != 2 {
		t.Fatalf("limit: %d networks", n.Len())
	}
	if n.For(netip.MustParseAddr("192.0.2.1")) != a {
		t.Fatal("the most recently used network was evicted")
	}
	if n.For(netip.MustParseAddr("2001:db8::1")) == b {
		t.Fatal("the least recently used network was kept")
	}
}

func TestMerge(t *testing.T) {
	var l Learner
	if l.Merge(0) || !l.Merge(4*time.Second) || l.Merge(5*time.Second) || !l.Merge(3*time.Second) {
		t.Fatal("Merge keeps the smallest positive bound")
	}
	if got, _ := l.Learned(); got != 3*time.Second {
		t.Fatalf("learned %v", got)
	}
	if got := l.Interval(time.Second, 20*time.Second); got != 1500*time.Millisecond {
		t.Fatalf("interval %v", got)
	}
}
