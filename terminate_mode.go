package websocket

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/caddy-websocket/caddy-websocket/internal/terminate"
	"github.com/caddy-websocket/caddy-websocket/internal/tunnel"
	"github.com/caddy-websocket/caddy-websocket/internal/upgrade"
)

// terminate completes the client's handshake itself and opens the
// gateway's own WebSocket connection to a backend, with its own key and
// without the client's extensions (the backend speaks plain frames).
func (h *Handler) terminate(w http.ResponseWriter, r *http.Request) bool {
	offered := tokens(r.Header, "Sec-WebSocket-Protocol")
	if len(h.Subprotocols) > 0 && !slices.ContainsFunc(offered, func(p string) bool { return slices.Contains(h.Subprotocols, p) }) {
		h.refuse(w, r, &upgrade.Error{
			Status: http.StatusBadRequest, Code: "subprotocol", Header: "Sec-WebSocket-Protocol", Value: strings.Join(offered, ", "),
			Reason: fmt.Sprintf("client offers none of the required subprotocols (%s)", strings.Join(h.Subprotocols, ", ")),
		})
		return false
	}
	hdr := forwardHeaders(r)
	hdr.Del("Sec-WebSocket-Extensions")
	hdr.Set("Sec-WebSocket-Version", upgrade.Version)
	uri, host := requestTarget(r)
	key := newKey()
	hdr.Set("Sec-WebSocket-Key", key)
	id := newID()
	hdr.Set(IDHeader, id)
	backend, up, res, br, ok := h.openBackend(w, r, writeRequest(uri, host, hdr), key)
	if !ok {
		return false
	}
	h.debugHandshake(id, up, r.Header, res.Header)
	chosen := res.Header.Get("Sec-WebSocket-Protocol")
	switch {
	case chosen != "" && !slices.Contains(offered, chosen):
		backend.Close()
		h.backendFailed(w, r, up, &upgrade.Error{Status: http.StatusBadGateway, Code: "backend_invalid", Header: "Sec-WebSocket-Protocol", Value: chosen,
			Reason: fmt.Sprintf("backend chose subprotocol %q, which the client did not offer", chosen)})
		return false
	case chosen == "":
		for _, p := range h.Subprotocols {
			if slices.Contains(offered, p) {
				chosen = p
				break
			}
		}
	}

	// The 101 is the gateway's own; the backend's other headers (cookies)
	// are passed on.
	out := w.Header()
	for k, v := range res.Header {
		if !strings.HasPrefix(http.CanonicalHeaderKey(k), "Sec-Websocket-") {
			out[k] = v
		}
	}
	out.Set("Upgrade", "websocket")
	out.Set("Connection", "Upgrade")
	out.Set("Sec-WebSocket-Accept", upgrade.AcceptKey(r.Header.Get("Sec-WebSocket-Key")))
	if chosen != "" {
		out.Set("Sec-WebSocket-Protocol", chosen)
	}
	deflate := h.Compression != "off" && terminate.OffersDeflate(r.Header)
	if deflate {
		out.Set("Sec-WebSocket-Extensions", terminate.DeflateResponse)
	}
	pol := h.policyFor(up, r.RemoteAddr)
	if h.Client != nil && h.Client.Announce {
		h.announce(out, pol[0])
	}
	client, brw, ok := h.hijack(w, r, backend)
	if !ok {
		return false
	}

	side := h.Backend
	if side == nil {
		side = &Side{}
	}
	cfg := terminate.Config{
		Client:            pol[tunnel.Client],
		Backend:           pol[tunnel.Backend],
		MaxMessageSize:    h.MaxMessageSize,
		MaxMessageRate:    h.MaxMessageRate,
		Deflate:           deflate,
		Reconnect:         side.OnClose == "reconnect",
		ReconnectAttempts: side.ReconnectAttempts,
		ReconnectWindow:   time.Duration(side.ReconnectWindow),
		ReconnectBuffer:   side.ReconnectBuffer,
	}
	if cfg.Reconnect {
		cfg.Redial = h.redialer(uri, host, hdr, chosen)
	}
	h.startTerminate(r, id, client, backend, up, cfg, chosen, brw, buffered(br))
	return true
}

// redialer returns the Redial of a terminated connection. The request is
// kept as bytes, not as a header map: it is held for the connection's
// life. A re-dial offers the backend only the subprotocol the client has,
// and a key of its own.
func (h *Handler) redialer(uri, host string, hdr http.Header, chosen string) func(context.Context) (net.Conn, []byte, error) {
	if chosen != "" {
		hdr.Set("Sec-WebSocket-Protocol", chosen)
	} else {
		hdr.Del("Sec-WebSocket-Protocol")
	}
	hdr.Del("Sec-WebSocket-Key")
	req := writeRequest(uri, host, hdr)
	head := slices.Clip(req[:len(req)-2]) // up to the blank line
	return func(ctx context.Context) (net.Conn, []byte, error) {
		key := newKey()
		conn, _, res, br, err := h.connect(ctx, append(head, "Sec-WebSocket-Key: "+key+"\r\n\r\n"...), key)
		if err != nil {
			return nil, nil, err
		}
		if res.StatusCode != http.StatusSwitchingProtocols {
			conn.Close()
			return nil, nil, fmt.Errorf("backend answered %s", res.Status)
		}
		return conn, buffered(br), nil
	}
}

// tokens splits all values of a comma-separated header.
func tokens(h http.Header, name string) []string {
	var out []string
	for _, v := range h.Values(name) {
		for _, t := range strings.Split(v, ",") {
			if t = strings.TrimSpace(t); t != "" {
				out = append(out, t)
			}
		}
	}
	return out
}

func newKey() string {
	var b [16]byte
	rand.Read(b[:])
	return base64.StdEncoding.EncodeToString(b[:])
}
