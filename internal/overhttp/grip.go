package overhttp

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
)

// Grip is what a backend's "Sec-WebSocket-Extensions: grip" turned on.
type Grip struct {
	// Prefix starts the backend's messages meant for the client; it is
	// stripped, and a message without it is dropped.
	Prefix string
}

// ParseGrip finds the grip extension in the values of a
// Sec-WebSocket-Extensions header; ok is false when there is none.
func ParseGrip(values []string) (g Grip, ok bool) {
	for _, v := range values {
		for _, ext := range strings.Split(v, ",") {
			params := strings.Split(ext, ";")
			if strings.TrimSpace(params[0]) != "grip" {
				continue
			}
			g.Prefix = "m:"
			for _, p := range params[1:] {
				k, val, _ := strings.Cut(strings.TrimSpace(p), "=")
				if strings.TrimSpace(k) == "message-prefix" {
					g.Prefix = strings.Trim(strings.TrimSpace(val), `"`)
				}
			}
			return g, true
		}
	}
	return Grip{}, false
}

// Control is a GRIP control message ("c:" + JSON) from the backend.
type Control struct {
	Type    string `json:"type"`
	Channel string `json:"channel,omitempty"`
}

// controlPrefix starts a GRIP control message.
const controlPrefix = "c:"

// Split sorts a TEXT message of a GRIP backend: a control message (ctl
// set), a message for the client (msg, prefix stripped), or neither
// (dropped: no prefix). A control message that does not parse is an error.
func (g Grip) Split(text []byte) (msg []byte, ctl *Control, err error) {
	if rest, ok := bytes.CutPrefix(text, []byte(controlPrefix)); ok {
		var c Control
		if err := json.Unmarshal(rest, &c); err != nil {
			return nil, nil, fmt.Errorf("GRIP control message: %v", err)
		}
		if (c.Type == "subscribe" || c.Type == "unsubscribe") && c.Channel == "" {
			return nil, nil, fmt.Errorf("GRIP %s without a channel", c.Type)
		}
		return nil, &c, nil
	}
	if rest, ok := bytes.CutPrefix(text, []byte(g.Prefix)); ok {
		return rest, nil, nil
	}
	return nil, nil, nil
}
