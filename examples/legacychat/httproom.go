package legacychat

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/caddy-websocket/caddy-websocket/internal/overhttp"
)

// HTTPRoom is the same chat room for a backend that speaks only HTTP, as a
// servlet without a WebSocket API, a PHP script or a serverless function
// would: behind the gateway's mode http, each client event arrives as a
// POST of WebSocket-over-HTTP events, and the room is a channel of the
// gateway's push API. It keeps no connection and no member list: on OPEN
// it subscribes the connection to the channel "room" (a GRIP control
// message), and a "user:message" is published to that channel, which the
// gateway delivers to every member, the sender included.
type HTTPRoom struct {
	// Publish is the URL of the room's channel on the gateway's push API,
	// e.g. http://localhost:2019/websocket/channels/room/messages.
	Publish string
	// Client posts the publishes. Default: a client with a 5 s timeout.
	Client *http.Client
}

// ServeHTTP serves the page on GET and the WebSocket-over-HTTP events on
// POST /ws.
func (s *HTTPRoom) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet && (r.URL.Path == "/" || r.URL.Path == "/index.html") {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Write(page)
		return
	}
	if r.URL.Path != "/ws" || r.Method != http.MethodPost || r.Header.Get("Content-Type") != overhttp.ContentType {
		http.NotFound(w, r)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	in, err := overhttp.Decode(body, 0)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var out []byte
	for _, e := range in {
		switch e.Type {
		case overhttp.Open:
			// GRIP with an empty prefix: every TEXT of ours is for the
			// client, except the control messages ("c:").
			w.Header().Set("Sec-WebSocket-Extensions", `grip; message-prefix=""`)
			out = overhttp.Append(out, overhttp.Event{Type: overhttp.Open})
			out = overhttp.Append(out, overhttp.Event{Type: overhttp.Text, Content: []byte(`c:{"type":"subscribe","channel":"room"}`)})
		case overhttp.Text:
			if user, _, ok := strings.Cut(string(e.Content), ":"); ok && user != "" {
				s.publish(e.Content)
			}
		case overhttp.Close:
			out = overhttp.Append(out, e) // the close handshake: echo the code
		}
	}
	w.Header().Set("Content-Type", overhttp.ContentType)
	w.Write(out)
}

func (s *HTTPRoom) publish(msg []byte) {
	c := s.Client
	if c == nil {
		c = &http.Client{Timeout: 5 * time.Second}
	}
	res, err := c.Post(s.Publish, "text/plain; charset=utf-8", bytes.NewReader(msg))
	if err == nil {
		res.Body.Close()
	}
}
