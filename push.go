package websocket

import (
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

// pushTo queues a message for c's client.
func (c *connection) pushTo(op frame.Opcode, p []byte) error {
	ps, ok := c.relay.(pusher)
	if !ok {
		return errNoPush
	}
	return ps.Push(op, p)
}

// readPush reads a push request's message and its type.
func readPush(r *http.Request) (frame.Opcode, []byte, error) {
	op := frame.OpText
	switch t := r.URL.Query().Get("type"); t {
	case "binary":
		op = frame.OpBinary
	case "", "text":
		if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); t == "" && mt == "application/octet-stream" {
			op = frame.OpBinary
		}
	default:
		return 0, nil, fmt.Errorf("type %q: want text or binary", t)
	}
	p, err := io.ReadAll(io.LimitReader(r.Body, maxPushBody+1))
	if err != nil {
		return 0, nil, err
	}
	if len(p) > maxPushBody {
		return 0, nil, fmt.Errorf("message over %d bytes", maxPushBody)
	}
	if op == frame.OpText && !utf8.Valid(p) {
		return 0, nil, errors.New("a text message must be UTF-8 (send binary with ?type=binary)")
	}
	return op, p, nil
}

func badRequest(err error) error {
	return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: err}
}

// pushConnection answers POST connections/{id}/messages.
func pushConnection(w http.ResponseWriter, r *http.Request, c *connection) error {
	op, p, err := readPush(r)
	if err != nil {
		return badRequest(err)
	}
	switch err := c.pushTo(op, p); err {
	case nil:
	case errNoPush:
		return caddy.APIError{HTTPStatus: http.StatusConflict, Err: err}
	default:
		return caddy.APIError{HTTPStatus: http.StatusServiceUnavailable, Err: err}
	}
	return writeJSON(w, map[string]any{"id": c.id, "queued": len(p)})
}

// publishResult is what a publish did.
type publishResult struct {
	Channel     string `json:"channel"`
	Subscribers int    `json:"subscribers"`
	Queued      int    `json:"queued"`
	// Skipped are subscribers that could not take it (tunnel, closing, or
	// closed now as slow consumers).
	Skipped int `json:"skipped,omitempty"`
}

// publish queues a message (or, with closeCode, a Close) for every
// subscriber of a channel in this process.
func publish(channel string, op frame.Opcode, p []byte, closeCode frame.StatusCode, closeReason string) publishResult {
	res := publishResult{Channel: channel}
	if hb := currentHub(); hb != nil {
		for _, c := range hb.channels.subscribers(channel) {
			res.Subscribers++
			if closeCode != 0 {
				go c.relay.Close(closeCode, closeReason)
				res.Queued++
				continue
			}
			if err := c.pushTo(op, p); err != nil {
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
	op, p, err := readPush(r)
	if err != nil {
		return badRequest(err)
	}
	res := publish(channel, op, p, 0, "")
	logPublish(res)
	return writeJSON(w, res)
}

func logPublish(res publishResult) {
	caddy.Log().Named("http.handlers.websocket").Debug("websocket publish", zap.String("channel", res.Channel),
		zap.Int("subscribers", res.Subscribers), zap.Int("queued", res.Queued), zap.Int("skipped", res.Skipped))
}

// listChannels answers GET channels.
func listChannels(w http.ResponseWriter) error {
	out := map[string]int{}
	if hb := currentHub(); hb != nil {
		for k, v := range hb.channels.counts() {
			out[k] += v
		}
	}
	return writeJSON(w, map[string]any{"channels": out})
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
		op      frame.Opcode
		p       []byte
		code    frame.StatusCode
		reason  string
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
			jobs = append(jobs, job{channel: it.Channel, code: code, reason: m.Reason})
			continue
		default:
			return badRequest(fmt.Errorf("item %d: action %q: want send or close", i, m.Action))
		}
		j := job{channel: it.Channel, op: frame.OpText}
		switch {
		case m.ContentBin != nil:
			p, err := base64.StdEncoding.DecodeString(*m.ContentBin)
			if err != nil {
				return badRequest(fmt.Errorf("item %d: content-bin: %v", i, err))
			}
			j.op, j.p = frame.OpBinary, p
		case m.Content != nil:
			j.p = []byte(*m.Content)
		default:
			return badRequest(fmt.Errorf("item %d: ws-message has no content or content-bin", i))
		}
		switch m.Type {
		case "", "text", "binary":
			if m.Type == "binary" {
				j.op = frame.OpBinary
			} else if m.Type == "text" {
				j.op = frame.OpText
			}
		default:
			return badRequest(fmt.Errorf("item %d: type %q: want text or binary", i, m.Type))
		}
		if j.op == frame.OpText && !utf8.Valid(j.p) {
			return badRequest(fmt.Errorf("item %d: text content is not UTF-8", i))
		}
		jobs = append(jobs, j)
	}
	results := make([]publishResult, 0, len(jobs))
	for _, j := range jobs {
		res := publish(j.channel, j.op, j.p, j.code, j.reason)
		logPublish(res)
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
		c := findLive(id)
		if c == nil {
			return true, caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("no live connection %q", id)}
		}
		if r.Method != http.MethodPost {
			return true, caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: errors.New("use POST")}
		}
		return true, pushConnection(w, r, c)
	}
	return false, nil
}
