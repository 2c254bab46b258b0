package bus

import (
	"context"
	"sync"
)

// core is what every broker keeps alike: its instance's handlers, the
// topics wanted, whether the broker is reachable, and the lifetime of its
// goroutines (ctx ends with Close).
type core struct {
	h      Handlers
	t      topics
	st     state
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func (c *core) init(h Handlers) {
	c.h = h
	c.t.init()
	c.st.init(h.State)
	c.ctx, c.cancel = context.WithCancel(context.Background())
}

// onKick runs work, in the broker's goroutine, each time a subscription
// change was recorded (or a reconnect asks for a look), until Close.
func (c *core) onKick(work func()) {
	defer c.wg.Done()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-c.t.kick:
		}
		work()
	}
}

// Subscribe records that this instance wants topic; see Broker.
func (c *core) Subscribe(topic string) { c.t.set(topic, true) }

// Unsubscribe records that it no longer does.
func (c *core) Unsubscribe(topic string) { c.t.set(topic, false) }

// Status is the broker's state now.
func (c *core) Status() Status {
	up, err := c.st.get()
	n, pending := c.t.counts()
	return Status{Up: up, Err: err, Topics: n, Pending: pending}
}
