package bus

import (
	"errors"
	"sync"
)

// errConnecting is a broker's state before its first connection.
var errConnecting = errors.New("connecting to the broker")

// state is whether a broker is reachable, and tells Handlers.State of each
// change (not of every failed reconnect: once on loss, once on recovery).
type state struct {
	mu       sync.Mutex
	up       bool
	err      error
	reported bool // State was told of the current up (or down) at least once
	notify   func(up bool, err error)
}

func (s *state) init(notify func(bool, error)) {
	s.err, s.notify = errConnecting, notify
}

// set records the broker reachable (err nil) or not.
func (s *state) set(err error) {
	up := err == nil
	s.mu.Lock()
	changed := up != s.up || !s.reported
	s.up, s.err, s.reported = up, err, true
	s.mu.Unlock()
	if changed && s.notify != nil {
		s.notify(up, err)
	}
}

// get returns whether the broker is reachable, and why not.
func (s *state) get() (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.up, s.err
}
