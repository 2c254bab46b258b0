package websocket

import (
	"net/http"
	"slices"
	"strings"
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

// subscribe adds c to a channel.
func (h *hub) subscribe(c *connection, channel string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.conns[c.id] != c {
		return // already gone
	}
	subs := h.channels[channel]
	if subs == nil {
		subs = make(map[string]*connection)
		h.channels[channel] = subs
	}
	subs[c.id] = c
	if !slices.Contains(c.channels, channel) {
		c.channels = append(c.channels, channel)
	}
}

// unsubscribe removes c from a channel.
func (h *hub) unsubscribe(c *connection, channel string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.dropLocked(c, channel)
	c.channels = slices.DeleteFunc(c.channels, func(s string) bool { return s == channel })
}

func (h *hub) dropLocked(c *connection, channel string) {
	if subs := h.channels[channel]; subs != nil {
		delete(subs, c.id)
		if len(subs) == 0 {
			delete(h.channels, channel)
		}
	}
}

// subscribers returns the connections of a channel, in id order (so that
// a publish's order across them is stable).
func (h *hub) subscribers(channel string) []*connection {
	h.mu.Lock()
	out := make([]*connection, 0, len(h.channels[channel]))
	for _, c := range h.channels[channel] {
		out = append(out, c)
	}
	h.mu.Unlock()
	slices.SortFunc(out, func(a, b *connection) int { return strings.Compare(a.id, b.id) })
	return out
}

// channelCounts returns the subscribers of each channel.
func (h *hub) channelCounts() map[string]int {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[string]int, len(h.channels))
	for name, subs := range h.channels {
		out[name] = len(subs)
	}
	return out
}

// unsubscribeAllLocked ends a finished connection's subscriptions.
func (h *hub) unsubscribeAllLocked(c *connection) {
	for _, ch := range c.channels {
		h.dropLocked(c, ch)
	}
	c.channels = nil
}
