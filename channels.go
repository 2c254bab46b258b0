package websocket

import (
	"net/http"
	"slices"
	"strings"
	"sync"
)

// Channels group connections for the push API: a publish to a channel
// goes to every connection subscribed to it. A connection is subscribed by
// its backend: in mode http with GRIP control messages ("c:" +
// {"type":"subscribe","channel":...}), and in either terminating mode with
// a Grip-Channel header on the handshake's answer (a tunnel's backend
// headers pass to the client untouched). Subscriptions end with
// the connection.

// GripChannelHeader names the channels a backend's handshake answer
// subscribes the connection to (comma-separated; parameters after ";"
// are ignored). The gateway removes it from the client's answer.
const GripChannelHeader = "Grip-Channel"

// gripChannels takes the Grip-Channel header out of a backend's answer.
func gripChannels(h http.Header) []string {
	var out []string
	for _, t := range tokens(h, GripChannelHeader) {
		name, _, _ := strings.Cut(t, ";")
		if name = strings.TrimSpace(name); name != "" && !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	h.Del(GripChannelHeader)
	return out
}

// channelTable holds the push API's subscriptions: channel → id →
// subscriber. A connection that has ended is unsubscribed from all and
// marked, so that a subscription racing its end does not outlive it.
type channelTable struct {
	mu       sync.Mutex
	channels map[string]map[string]*connection
}

// subscribe adds c to a channel.
func (t *channelTable) subscribe(c *connection, channel string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if c.unsubscribed {
		return // already gone
	}
	if t.channels == nil {
		t.channels = make(map[string]map[string]*connection)
	}
	subs := t.channels[channel]
	if subs == nil {
		subs = make(map[string]*connection)
		t.channels[channel] = subs
		busSubscribe(channelTopic(channel)) // the first subscriber here
	}
	subs[c.id] = c
	if !slices.Contains(c.channels, channel) {
		c.channels = append(c.channels, channel)
	}
}

// unsubscribe removes c from a channel.
func (t *channelTable) unsubscribe(c *connection, channel string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.dropLocked(c, channel)
	c.channels = slices.DeleteFunc(c.channels, func(s string) bool { return s == channel })
}

func (t *channelTable) dropLocked(c *connection, channel string) {
	if subs := t.channels[channel]; subs != nil {
		delete(subs, c.id)
		if len(subs) == 0 {
			delete(t.channels, channel)
			busUnsubscribe(channelTopic(channel)) // the last one left
		}
	}
}

// subscribers returns the connections of a channel, in id order (so that
// a publish's order across them is stable).
func (t *channelTable) subscribers(channel string) []*connection {
	t.mu.Lock()
	out := make([]*connection, 0, len(t.channels[channel]))
	for _, c := range t.channels[channel] {
		out = append(out, c)
	}
	t.mu.Unlock()
	slices.SortFunc(out, func(a, b *connection) int { return strings.Compare(a.id, b.id) })
	return out
}

// counts returns the subscribers of each channel.
func (t *channelTable) counts() map[string]int {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]int, len(t.channels))
	for name, subs := range t.channels {
		out[name] = len(subs)
	}
	return out
}

// unsubscribeAll ends a finished connection's subscriptions.
func (t *channelTable) unsubscribeAll(c *connection) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, ch := range c.channels {
		t.dropLocked(c, ch)
	}
	c.channels = nil
	c.unsubscribed = true
}
