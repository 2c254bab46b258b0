package websocket

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// TestTries: the one loop that reaches a backend (first dials, mode
// http's OPEN, reconnects), over three upstreams a, b, c taken in order.
// Every round of lb_try_duration tries them all (before it was one loop
// per caller, and a round after the first tried only one upstream).
func TestTries(t *testing.T) {
	unreachable := errors.New("connection refused")
	for _, tc := range []struct {
		name    string
		retries int
		tryFor  time.Duration
		fail    map[string]error // upstream → its attempt's error; absent: success
		want    string           // the attempts, in order
		ok      bool
	}{
		{"first answers", 2, 0, nil, "a", true},
		{"second answers", 2, 0, map[string]error{"a": unreachable}, "a b", true},
		{"all fail, each once", 2, 0, map[string]error{"a": unreachable, "b": unreachable, "c": unreachable}, "a b c", false},
		{"lb_retries 1: two attempts", 1, 0, map[string]error{"a": unreachable, "b": unreachable}, "a b", false},
		{"a final error stops", 2, 0, map[string]error{"a": final{errors.New("timeout")}}, "a", false},
		{"within try_duration, rounds again", 2, 50 * time.Millisecond,
			map[string]error{"a": unreachable, "b": unreachable, "c": unreachable}, "a b c a b c", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ups := []upstream{{raw: "a"}, {raw: "b"}, {raw: "c"}}
			released := 0
			tr := tries{
				next: func(tried map[string]bool) (*upstream, func()) {
					for _, u := range ups {
						if !tried[u.raw] {
							tried[u.raw] = true
							return &u, func() { released++ }
						}
					}
					return nil, nil
				},
				retries:  tc.retries,
				tryFor:   tc.tryFor,
				interval: 100 * time.Millisecond,
			}
			var attempts []string
			failed, last := tr.run(context.Background(), func(u upstream, release func()) error {
				attempts = append(attempts, u.raw)
				if err := tc.fail[u.raw]; err != nil {
					release()
					return err
				}
				return nil
			})
			if got := strings.Join(attempts, " "); got != tc.want {
				t.Errorf("attempts %q, want %q", got, tc.want)
			}
			if (last == nil) != tc.ok || len(failed) != released {
				t.Errorf("last %v, failed %q, released %d", last, failed, released)
			}
		})
	}
}
