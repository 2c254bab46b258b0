package websocket

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-websocket/caddy-websocket/internal/bus"
	"github.com/caddy-websocket/caddy-websocket/internal/frame"
)

// The push API lets a backend speak first: a message to one connection, or
// to every subscriber of a channel, in terminate and http modes (a tunnel
// relays frames verbatim and has no message boundary to push at).
//
//	POST /websocket/connections/{id}/messages   body: the message
//	POST /websocket/channels/{name}/messages    body: the message
//	GET  /websocket/channels                    channels and subscriber counts
//	POST /websocket/publish/                    Pushpin's publish format (ws-message)
//
// A message is text unless ?type=binary or Content-Type
// application/octet-stream. Pushes to a connection are delivered in the
// order they were accepted, and before any message of the backend's that
// the gateway relays after the push was answered; each connection's queue
// holds at most terminate.PushBuffer bytes, past which the client is a slow
// consumer and is closed with 1011 (as a client that does not read for
// write_timeout is).

// maxPushBody bounds a push request's body.
const maxPushBody = 4 << 20

var errNoPush = errors.New("the connection is in tunnel mode: frames are relayed verbatim, there is no message boundary to push at (use mode terminate or http)")

// pusher is a relay that can send its client a message of the gateway's
// (terminate.Conn): queued, never blocking the caller, and written before
// any message the client is sent after it.
type pusher interface {
	Push(op frame.Opcode, p []byte) error
}

// pushable reports whether c's relay can take pushes.
func (c *connection) pushable() bool {
	_, ok := c.relay.(pusher)
	return ok
}

// push queues a message (or, for a Close, starts closing) for c's client.
func (c *connection) push(m bus.Message) error {
	if m.Kind == bus.Close {
		go c.relay.Close(frame.StatusCode(m.Code), m.Reason)
		return nil
	}
	ps, ok := c.relay.(pusher)
	if !ok {
		return errNoPush
	}
	return ps.Push(frame.Opcode(m.Kind), m.Payload)
}

// readPush reads a push request's message.
func readPush(r *http.Request) (bus.Message, error) {
	m := bus.Message{Kind: bus.Text}
	switch t := r.URL.Query().Get("type"); t {
	case "binary":
		m.Kind = bus.Binary
	case "", "text":
		if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); t == "" && mt == "application/octet-stream" {
			m.Kind = bus.Binary
		}
	default:
		return m, fmt.Errorf("type %q: want text or binary", t)
	}
	p, err := io.ReadAll(io.LimitReader(r.Body, maxPushBody+1))
	if err != nil {
		return m, err
	}
	if len(p) > maxPushBody {
		return m, fmt.Errorf("message over %d bytes", maxPushBody)
	}
	if m.Kind == bus.Text && !utf8.Valid(p) {
		return m, errors.New("a text message must be UTF-8 (send binary with ?type=binary)")
	}
	m.Payload = p
	return m, nil
}

func badRequest(err error) error {
	return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: err}
}

// pushConnection answers POST connections/{id}/messages: to c when this
// instance holds it, otherwise through the fleet's bus to the instance
// that does.
func pushConnection(w http.ResponseWriter, r *http.Request, id string) error {
	c := findLive(id)
	f := currentBus()
	if c == nil && f == nil {
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("no live connection %q", id)}
	}
	if r.Method != http.MethodPost {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: errors.New("use POST")}
	}
	m, err := readPush(r)
	if err != nil {
		return badRequest(err)
	}
	if c == nil {
		ok, err := f.send(r.Context(), id, m)
		switch {
		case err != nil:
			return err
		case !ok:
			return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("no live connection %q on any instance of the fleet (a tunnel's connections take no pushes)", id)}
		}
		return writeJSON(w, map[string]any{"id": id, "queued": len(m.Payload), "via": "bus"})
	}
	switch err := c.push(m); err {
	case nil:
	case errNoPush:
		return caddy.APIError{HTTPStatus: http.StatusConflict, Err: err}
	default:
		return caddy.APIError{HTTPStatus: http.StatusServiceUnavailable, Err: err}
	}
	return writeJSON(w, map[string]any{"id": c.id, "queued": len(m.Payload)})
}

// publishResult is what a publish did: on this instance's subscribers, or,
// with a bus, that the broker took it.
type publishResult struct {
	Channel     string `json:"channel"`
	Subscribers int    `json:"subscribers"`
	Queued      int    `json:"queued"`
	// Skipped are subscribers that could not take it (tunnel, closing, or
	// closed now as slow consumers).
	Skipped int `json:"skipped,omitempty"`
	// Bus: the message went to the fleet's bus, each instance delivers
	// its copy (the counts above are then zero); Instances is how many
	// instances have subscribers, when the broker can tell (Redis).
	Bus       bool `json:"bus,omitempty"`
	Instances *int `json:"instances,omitempty"`
}

// publish sends m to every subscriber of a channel: through the fleet's
// bus when there is one (this instance's own subscribers get it from the
// bus too, once), otherwise to this instance's.
func publish(ctx context.Context, channel string, m bus.Message) (publishResult, error) {
	if f := currentBus(); f != nil {
		return f.publish(ctx, channel, m)
	}
	res := deliver(channel, m)
	logPublish(res)
	return res, nil
}

// deliver queues m (a message, or a Close) for every subscriber of a
// channel on this instance.
func deliver(channel string, m bus.Message) publishResult {
	res := publishResult{Channel: channel}
	if hb := currentHub(); hb != nil {
		for _, c := range hb.channels.subscribers(channel) {
			res.Subscribers++
			if err := c.push(m); err != nil {
				res.Skipped++
				continue
			}
			res.Queued++
		}
	}
	return res
}

// pushChannel answers POST channels/{name}/messages.
func pushChannel(w http.ResponseWriter, r *http.Request, channel string) error {
	m, err := readPush(r)
	if err != nil {
		return badRequest(err)
	}
	res, err := publish(r.Context(), channel, m)
	if err != nil {
		return err
	}
	return writeJSON(w, res)
}

func logPublish(res publishResult) {
	caddy.Log().Named("http.handlers.websocket").Debug("websocket publish", zap.String("channel", res.Channel),
		zap.Int("subscribers", res.Subscribers), zap.Int("queued", res.Queued), zap.Int("skipped", res.Skipped))
}

// listChannels answers GET channels: this instance's subscribers per
// channel, and the fleet's bus when there is one.
func listChannels(w http.ResponseWriter) error {
	out := map[string]int{}
	if hb := currentHub(); hb != nil {
		for k, v := range hb.channels.counts() {
			out[k] += v
		}
	}
	body := map[string]any{"channels": out}
	if f := currentBus(); f != nil {
		body["bus"] = f.view()
	}
	return writeJSON(w, body)
}

// pushpinPublish is the body of Pushpin's publish endpoint, so that
// GRIP publisher libraries (pubcontrol, gripcontrol, js-grip, go-gripcontrol…)
// work unchanged with control_uri http://<admin>/websocket.
type pushpinPublish struct {
	Items []struct {
		Channel string `json:"channel"`
		Formats struct {
			WSMessage *struct {
				Action     string  `json:"action"`
				Type       string  `json:"type"`
				Content    *string `json:"content"`
				ContentBin *string `json:"content-bin"`
				Code       int     `json:"code"`
				Reason     string  `json:"reason"`
			} `json:"ws-message"`
		} `json:"formats"`
	} `json:"items"`
}

// pushpinPublishHandler answers POST publish/ in Pushpin's format: the
// ws-message format of each item (send: text content, or base64
// content-bin, binary; close, with code). Other formats (http-response,
// http-stream) and actions (hint, refresh) are refused: this gateway holds
// no HTTP streams.
func pushpinPublishHandler(w http.ResponseWriter, r *http.Request) error {
	var body pushpinPublish
	dec := json.NewDecoder(io.LimitReader(r.Body, maxPushBody))
	if err := dec.Decode(&body); err != nil {
		return badRequest(fmt.Errorf("publish body: %v", err))
	}
	type job struct {
		channel string
		m       bus.Message
	}
	var jobs []job
	for i, it := range body.Items {
		m := it.Formats.WSMessage
		if it.Channel == "" || m == nil {
			return badRequest(fmt.Errorf("item %d: want a channel and a ws-message format", i))
		}
		switch m.Action {
		case "", "send":
		case "close":
			code := frame.StatusCode(m.Code)
			if code == 0 {
				code = frame.CloseNormal
			}
			if !frame.ValidCloseCode(code) {
				return badRequest(fmt.Errorf("item %d: close code %d may not be sent", i, m.Code))
			}
			jobs = append(jobs, job{channel: it.Channel, m: bus.Message{Kind: bus.Close, Code: uint16(code), Reason: m.Reason}})
			continue
		default:
			return badRequest(fmt.Errorf("item %d: action %q: want send or close", i, m.Action))
		}
		j := job{channel: it.Channel, m: bus.Message{Kind: bus.Text}}
		switch {
		case m.ContentBin != nil:
			p, err := base64.StdEncoding.DecodeString(*m.ContentBin)
			if err != nil {
				return badRequest(fmt.Errorf("item %d: content-bin: %v", i, err))
			}
			j.m.Kind, j.m.Payload = bus.Binary, p
		case m.Content != nil:
			j.m.Payload = []byte(*m.Content)
		default:
			return badRequest(fmt.Errorf("item %d: ws-message has no content or content-bin", i))
		}
		switch m.Type {
		case "", "text", "binary":
			if m.Type == "binary" {
				j.m.Kind = bus.Binary
			} else if m.Type == "text" {
				j.m.Kind = bus.Text
			}
		default:
			return badRequest(fmt.Errorf("item %d: type %q: want text or binary", i, m.Type))
		}
		if j.m.Kind == bus.Text && !utf8.Valid(j.m.Payload) {
			return badRequest(fmt.Errorf("item %d: text content is not UTF-8", i))
		}
		jobs = append(jobs, j)
	}
	results := make([]publishResult, 0, len(jobs))
	for i, j := range jobs {
		res, err := publish(r.Context(), j.channel, j.m)
		if err != nil {
			if i > 0 {
				err = fmt.Errorf("item %d (items before it were published): %w", i, err)
			}
			return caddy.APIError{HTTPStatus: http.StatusServiceUnavailable, Err: err}
		}
		results = append(results, res)
	}
	return writeJSON(w, map[string]any{"items": results})
}

// pushRoute answers the push API's routes below the status root; ok is
// false for a path that is not one of them.
func pushRoute(w http.ResponseWriter, r *http.Request, rest string) (handled bool, err error) {
	switch {
	case rest == "channels" && r.Method == http.MethodGet:
		return true, listChannels(w)
	case strings.HasPrefix(rest, "channels/") && strings.HasSuffix(rest, "/messages"):
		name := strings.TrimSuffix(strings.TrimPrefix(rest, "channels/"), "/messages")
		if r.Method != http.MethodPost {
			return true, caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: errors.New("use POST")}
		}
		if name == "" {
			return true, badRequest(errors.New("no channel name"))
		}
		return true, pushChannel(w, r, name)
	case rest == "publish" || rest == "publish/":
		if r.Method != http.MethodPost {
			return true, caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: errors.New("use POST")}
		}
		return true, pushpinPublishHandler(w, r)
	case strings.HasPrefix(rest, "connections/") && strings.HasSuffix(rest, "/messages"):
		id := strings.TrimSuffix(strings.TrimPrefix(rest, "connections/"), "/messages")
		return true, pushConnection(w, r, id)
	}
	return false, nil
}
