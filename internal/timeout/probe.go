package timeout

import "time"

// ProbeRun is what a discovery probe saw of a backend that dropped it. The
// probe sends nothing after its handshake (at 0); the backend may still
// write to it — a chat room broadcasts its members' lines to every member,
// and the probe is one. Times are offsets from the handshake.
//
// A backend's idle timer may count what it receives, what it sends, or
// both, and the probe cannot be told which. Each rule gives its own
// reading of the same drop:
//
//   - counting what it receives: the timeout is End (the probe has been
//     silent since the handshake);
//   - counting what it sends (alone or with what it receives: the probe
//     sends nothing): the timeout is End − LastWrite.
//
// A rule is ruled out when the backend survived a longer silence under it
// earlier in the run: under "counts what it sends", a gap of LongestGap
// between two of its writes would have ended the probe if the timeout were
// End − LastWrite < LongestGap.
type ProbeRun struct {
	// LastWrite is when the backend last wrote to the probe (0: only its
	// handshake answer).
	LastWrite time.Duration
	// LongestGap is the longest time between two successive writes of the
	// backend (the handshake answer counting as the first) up to
	// LastWrite.
	LongestGap time.Duration
	// End is when the backend dropped the probe.
	End time.Duration
}

// Wrote records a write of the backend at offset at.
func (r *ProbeRun) Wrote(at time.Duration) {
	if gap := at - r.LastWrite; gap > r.LongestGap {
		r.LongestGap = gap
	}
	r.LastWrite = at
}

// IdleRule names what a backend's idle timer counts, as a probe run tells
// it apart.
type IdleRule string

// The rules a probe run can be consistent with.
const (
	// CountsReceived: the timer counts what the backend receives.
	CountsReceived IdleRule = "received"
	// CountsSent: the timer counts what the backend sends (alone, or
	// with what it receives).
	CountsSent IdleRule = "sent"
	// EitherRule: the run cannot tell the two apart; the shorter reading
	// is taken, which keeps users alive under both.
	EitherRule IdleRule = "either"
)

// slack is how much longer than a reading an earlier gap must be to rule
// the reading out: timers fire late and the probe sees writes after a
// network delay. Ruling a reading out too eagerly could pick the longer,
// unsafe one; too cautiously only picks the shorter.
func slack(d time.Duration) time.Duration { return d/4 + 100*time.Millisecond }

// IdleTimeout returns the idle timeout the run proves, safe for users
// whichever the backend's rule is, and the rule it is taken under; 0 when
// the run proves nothing (no reading at least min, the shortest idle
// timeout the caller believes in).
func (r ProbeRun) IdleTimeout(min time.Duration) (time.Duration, IdleRule) {
	recv := r.End
	sent := r.End - r.LastWrite
	recvOK := recv >= min && recv > 0
	sentOK := sent >= min && sent > 0 && r.LongestGap <= sent+slack(sent)
	switch {
	case recvOK && sentOK:
		if sent == recv {
			return recv, EitherRule // the backend wrote nothing after its answer
		}
		return min2(recv, sent), EitherRule
	case recvOK:
		return recv, CountsReceived
	case sentOK:
		return sent, CountsSent
	}
	return 0, ""
}

func min2(a, b time.Duration) time.Duration {
	if a < b {
		return a
	}
	return b
}
