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
func (hb *hub) subscribe(c *connection, channel string) {
	hb.mu.Lock()
	defer hb.mu.Unlock()
	if hb.conns[c.id] != c {
		return // already gone
	}
	subs := hb.channels[channel]
	if subs == nil {
		subs = make(map[string]*connection)
		hb.channels[channel] = subs
	}
	subs[c.id] = c
	if !slices.Contains(c.channels, channel) {
		c.channels = append(c.channels, channel)
	}
}

// unsubscribe removes c from a channel.
func (hb *hub) unsubscribe(c *connection, channel string) {
	hb.mu.Lock()
	defer hb.mu.Unlock()
	hb.dropLocked(c, channel)
	c.channels = slices.DeleteFunc(c.channels, func(s string) bool { return s == channel })
}

func (hb *hub) dropLocked(c *connection, channel string) {
	if subs := hb.channels[channel]; subs != nil {
		delete(subs, c.id)
		if len(subs) == 0 {
			delete(hb.channels, channel)
		}
	}
}

// subscribers returns the connections of a channel, in id order (so that
// a publish's order across them is stable).
func (hb *hub) subscribers(channel string) []*connection {
	hb.mu.Lock()
	out := make([]*connection, 0, len(hb.channels[channel]))
	for _, c := range hb.channels[channel] {
		out = append(out, c)
	}
	hb.mu.Unlock()
	slices.SortFunc(out, func(a, b *connection) int { return strings.Compare(a.id, b.id) })
	return out
}

// channelCounts returns the subscribers of each channel.
func (hb *hub) channelCounts() map[string]int {
	hb.mu.Lock()
	defer hb.mu.Unlock()
	out := make(map[string]int, len(hb.channels))
	for name, subs := range hb.channels {
		out[name] = len(subs)
	}
	return out
}

// unsubscribeAllLocked ends a finished connection's subscriptions.
func (hb *hub) unsubscribeAllLocked(c *connection) {
	for _, ch := range c.channels {
		hb.dropLocked(c, ch)
	}
	c.channels = nil
}
