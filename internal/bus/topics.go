package bus

import "sync"

// topics is the set of topics an instance wants from its broker, which of
// them the broker has confirmed, and the changes not yet made on it.
// Subscribe and Unsubscribe only record here: a broker's own goroutine
// makes the changes (take), and after a reconnect subscribes all of them
// again (all), so a caller never waits on the broker.
type topics struct {
	mu        sync.Mutex
	want      map[string]bool
	confirmed map[string]bool
	ops       []change
	kick      chan struct{} // one pending wake-up of the broker's goroutine
}

// change is a subscription to make (sub) or to end on the broker.
type change struct {
	topic string
	sub   bool
}

func (t *topics) init() {
	t.want, t.confirmed = map[string]bool{}, map[string]bool{}
	t.kick = make(chan struct{}, 1)
}

// set records that topic is wanted (or no longer) and wakes the broker's
// goroutine; a change to what is already so is no change.
func (t *topics) set(topic string, sub bool) {
	t.mu.Lock()
	if t.want[topic] == sub {
		t.mu.Unlock()
		return
	}
	if sub {
		t.want[topic] = true
	} else {
		delete(t.want, topic)
		delete(t.confirmed, topic)
	}
	t.ops = append(t.ops, change{topic, sub})
	t.mu.Unlock()
	t.poke()
}

func (t *topics) poke() {
	select {
	case t.kick <- struct{}{}:
	default:
	}
}

// take returns the changes recorded since the last take, in order.
func (t *topics) take() []change {
	t.mu.Lock()
	defer t.mu.Unlock()
	ops := t.ops
	t.ops = nil
	return ops
}

// all returns every wanted topic.
func (t *topics) all() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]string, 0, len(t.want))
	for k := range t.want {
		out = append(out, k)
	}
	return out
}

// confirm records the broker's word on a topic: subscribed or not.
func (t *topics) confirm(topic string, subscribed bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if subscribed && t.want[topic] {
		t.confirmed[topic] = true
	} else {
		delete(t.confirmed, topic)
	}
}

// lost records that the broker has none (the connection to it is gone).
func (t *topics) lost() {
	t.mu.Lock()
	defer t.mu.Unlock()
	clear(t.confirmed)
}

// counts returns how many topics are wanted and how many of them are not
// confirmed yet.
func (t *topics) counts() (n, pending int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.want), len(t.want) - len(t.confirmed)
}

// batches groups consecutive changes of the same direction, in order,
// at most max topics each: one broker command per batch.
func batches(ops []change, max int) [][]change {
	var out [][]change
	for len(ops) > 0 {
		n := 1
		for n < len(ops) && n < max && ops[n].sub == ops[0].sub {
			n++
		}
		out = append(out, ops[:n])
		ops = ops[n:]
	}
	return out
}
