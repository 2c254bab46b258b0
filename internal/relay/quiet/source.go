package quiet

import "net"

// Source is a connection that is not a socket of its own but is told when
// it has bytes: an HTTP/2 or HTTP/3 stream (package stream), whose bytes a
// goroutine of the HTTP server's hands over. The relay reads it through
// Next and parks on Arm as it parks a socket in the epoll set, so a quiet
// source holds no goroutine of the relay's either.
type Source interface {
	net.Conn
	// Next returns the bytes handed over and not yet consumed; they stay
	// valid until the next Next or Consumed. When there are none it waits
	// for them (until the read deadline) if wait is set, and otherwise
	// returns ErrWouldBlock. io.EOF: the peer ended its side.
	Next(wait bool) ([]byte, error)
	// Consumed says the bytes of the last Next are done with.
	Consumed()
	// Arm has ready called once, when bytes or the end are there: at
	// once (in the calling goroutine) if they are already.
	Arm(ready func())
	// Disarm forgets the ready of Arm.
	Disarm()
}
