//go:build !linux

package quiet

// Elsewhere legs keep their goroutine in Go's network poller.
const supported = false

func add(*Waiter) error   { return nil }
func rearm(int) error     { return nil }
func remove(*Waiter, int) {}
