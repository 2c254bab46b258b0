package timeout

import (
	"testing"
	"time"
)

func TestProbeRunIdleTimeout(t *testing.T) {
	s := func(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }
	for _, c := range []struct {
		name   string
		writes []float64
		end    float64
		want   float64
		rule   IdleRule
	}{
		// The seed's room: a timer on what it receives (3 s); two members'
		// lines broadcast to the probe at 2.05 s. Counting what it sends,
		// the backend would have dropped the probe at 0.95 s already.
		{"broadcast before a received-rule drop", []float64{2.05, 2.06}, 3.0, 3.0, CountsReceived},
		{"silent backend", nil, 3.0, 3.0, EitherRule},
		// A timer on what it sends (1.5 s), writing every second: both
		// readings fit the run; the shorter is safe under both.
		{"sent-rule backend writing every second", []float64{1, 2}, 3.5, 1.5, EitherRule},
		// Counting what it receives, it would not have dropped before 5 s.
		{"sent-rule drop soon after a write", []float64{0.5}, 2.5, 2.0, EitherRule},
		// A busy room: writes every 0.5 s; the sent reading (0.95 s) is
		// below the 1 s the caller believes in.
		{"busy room, sent reading below min", []float64{0.5, 1, 1.5, 2, 2.05}, 3.0, 3.0, CountsReceived},
		{"nothing above min", nil, 0.5, 0, ""},
		{"received reading ruled out by nothing, sent ruled out", []float64{0.2, 2.9}, 3.0, 3.0, CountsReceived},
	} {
		var r ProbeRun
		for _, w := range c.writes {
			r.Wrote(s(w))
		}
		r.End = s(c.end)
		got, rule := r.IdleTimeout(time.Second)
		if got != s(c.want) || rule != c.rule {
			t.Errorf("%s: %v (%s), want %v (%s)", c.name, got, rule, s(c.want), c.rule)
		}
	}
}
