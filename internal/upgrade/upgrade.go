// Package upgrade validates WebSocket opening handshakes (RFC 6455 §4) on both
// sides of the gateway: the client's upgrade request, before any backend is
// dialled, and the backend's answer to the gateway's own request.
//
// Every refusal is an *Error that names the HTTP status to answer with, a
// one-line reason a person can act on, and the header that caused it, so a
// failed upgrade never has to be diagnosed with a packet capture.
package upgrade

import (
	"crypto/sha1"
	"encoding/base64"
	"fmt"
	"net/http"
	"strings"
)

// Error is a refused handshake.
type Error struct {
	// Status is the HTTP status to answer with (400, 403, 426; 502 or 504
	// for a backend's answer).
	Status int
	// Reason is one line of plain text for the response body and the log.
	Reason string
	// Header names the offending header, if one is to blame.
	Header string
	// Value is what that header held (cut to 256 bytes).
	Value string
	// Code names the refusal in a word, for metrics: method, http_version,
	// upgrade, connection, version, key, body, origin, subprotocol,
	// backend_unreachable, backend_timeout, backend_invalid.
	Code string
}

func (e *Error) Error() string { return e.Reason }

func refuse(status int, code, header, value, format string, args ...any) *Error {
	if len(value) > 256 {
		value = value[:256]
	}
	return &Error{Status: status, Code: code, Reason: fmt.Sprintf(format, args...), Header: header, Value: value}
}

// Version is the only protocol version RFC 6455 defines; it is what a 426
// answer advertises.
const Version = "13"

// IsWebSocket reports whether r is an attempt at a WebSocket handshake and so
// belongs to the gateway rather than to the next handler: its Upgrade header
// names websocket, or it carries a Sec-WebSocket-Key or -Version header (an
// attempt whose Upgrade header was lost on the way deserves a clear 400, not
// a page from the next handler).
func IsWebSocket(r *http.Request) bool {
	return HasToken(r.Header, "Upgrade", "websocket") ||
		r.Header.Get("Sec-WebSocket-Key") != "" ||
		r.Header.Get("Sec-WebSocket-Version") != ""
}

// IsExtendedConnect reports whether r opens a WebSocket as an extended
// CONNECT stream: RFC 8441 over HTTP/2 (Go's server keeps the :protocol
// pseudo-header in the header map) or RFC 9220 over HTTP/3 (quic-go puts
// it in r.Proto), as Caddy's reverse_proxy recognises them.
func IsExtendedConnect(r *http.Request) bool {
	if r.Method != http.MethodConnect {
		return false
	}
	switch r.ProtoMajor {
	case 2:
		return strings.EqualFold(r.Header.Get(":protocol"), "websocket")
	case 3:
		return strings.EqualFold(r.Proto, "websocket")
	}
	return false
}

// ValidateExtendedConnect checks a WebSocket extended CONNECT request (RFC
// 8441 §4-5, RFC 9220 §3): the version is 13 and there is no
// Sec-WebSocket-Key, since the stream needs no key or accept. It returns nil
// for a valid request; the request's own form (method, :protocol) is what
// IsExtendedConnect checked.
func ValidateExtendedConnect(r *http.Request) *Error {
	if e := checkVersion(r); e != nil {
		return e
	}
	if ks := r.Header.Values("Sec-WebSocket-Key"); len(ks) > 0 {
		return refuse(http.StatusBadRequest, "key", "Sec-WebSocket-Key", strings.Join(ks, ", "),
			"a WebSocket over HTTP/2 or HTTP/3 must not carry Sec-WebSocket-Key (RFC 8441 §5)")
	}
	return nil
}

func checkVersion(r *http.Request) *Error {
	switch vs := r.Header.Values("Sec-WebSocket-Version"); {
	case len(vs) == 0:
		return refuse(http.StatusBadRequest, "version", "Sec-WebSocket-Version", "",
			"missing Sec-WebSocket-Version header: want 13")
	case len(vs) > 1:
		v := strings.Join(vs, ", ")
		return refuse(http.StatusBadRequest, "version", "Sec-WebSocket-Version", v,
			"more than one Sec-WebSocket-Version header: %q", v)
	case strings.TrimSpace(vs[0]) != Version:
		return refuse(http.StatusUpgradeRequired, "version", "Sec-WebSocket-Version", vs[0],
			"unsupported Sec-WebSocket-Version %q: this server speaks 13", vs[0])
	}
	return nil
}

// ValidateRequest checks a client's upgrade request against RFC 6455 §4.2.1.
// It returns nil for a valid request.
func ValidateRequest(r *http.Request) *Error {
	if r.Method != http.MethodGet {
		return refuse(http.StatusBadRequest, "method", "", r.Method,
			"WebSocket upgrade requires method GET, got %s", r.Method)
	}
	if r.ProtoMajor != 1 || r.ProtoMinor < 1 {
		return refuse(http.StatusBadRequest, "http_version", "", r.Proto,
			"WebSocket upgrade requires HTTP/1.1, got %s", r.Proto)
	}
	if !HasToken(r.Header, "Upgrade", "websocket") {
		v := strings.Join(r.Header.Values("Upgrade"), ", ")
		if v == "" {
			return refuse(http.StatusBadRequest, "upgrade", "Upgrade", v, "missing Upgrade: websocket header")
		}
		return refuse(http.StatusBadRequest, "upgrade", "Upgrade", v, "bad Upgrade header %q: want websocket", v)
	}
	if !HasToken(r.Header, "Connection", "upgrade") {
		v := strings.Join(r.Header.Values("Connection"), ", ")
		return refuse(http.StatusBadRequest, "connection", "Connection", v,
			"bad Connection header %q: it must contain the token upgrade", v)
	}
	if e := checkVersion(r); e != nil {
		return e
	}
	switch ks := r.Header.Values("Sec-WebSocket-Key"); {
	case len(ks) == 0:
		return refuse(http.StatusBadRequest, "key", "Sec-WebSocket-Key", "", "missing Sec-WebSocket-Key header")
	case len(ks) > 1:
		v := strings.Join(ks, ", ")
		return refuse(http.StatusBadRequest, "key", "Sec-WebSocket-Key", v, "more than one Sec-WebSocket-Key header")
	case !validKey(ks[0]):
		return refuse(http.StatusBadRequest, "key", "Sec-WebSocket-Key", ks[0],
			"bad Sec-WebSocket-Key %q: want base64 of 16 bytes", ks[0])
	}
	// A body on an upgrade request would be read by nobody and could smuggle
	// a second request past the gateway into the backend.
	if len(r.TransferEncoding) > 0 {
		v := strings.Join(r.TransferEncoding, ", ")
		return refuse(http.StatusBadRequest, "body", "Transfer-Encoding", v,
			"an upgrade request must not have a body (Transfer-Encoding: %s)", v)
	}
	if r.ContentLength != 0 {
		v := r.Header.Get("Content-Length")
		return refuse(http.StatusBadRequest, "body", "Content-Length", v,
			"an upgrade request must not have a body (Content-Length: %s)", v)
	}
	return nil
}

func validKey(k string) bool {
	if len(k) != 24 {
		return false
	}
	var b [18]byte
	n, err := base64.StdEncoding.Decode(b[:], []byte(k))
	return err == nil && n == 16
}

// HasToken reports whether the comma-separated token lists in all of h's
// values for name contain token, compared case-insensitively (RFC 9110
// §5.6.1), so "keep-alive, Upgrade" has "upgrade".
func HasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for v != "" {
			var t string
			t, v, _ = strings.Cut(v, ",")
			if strings.EqualFold(strings.Trim(t, " \t"), token) {
				return true
			}
		}
	}
	return false
}

const acceptGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// AcceptKey returns the Sec-WebSocket-Accept value that answers key.
func AcceptKey(key string) string {
	h := sha1.New()
	h.Write([]byte(key))
	h.Write([]byte(acceptGUID))
	return base64.StdEncoding.EncodeToString(h.Sum(nil))
}

// CheckResponse checks a backend's 101 answer to an upgrade request that
// carried key. Any status other than 101 is the caller's to pass on; a 101
// that does not complete a WebSocket handshake is a bad gateway.
func CheckResponse(res *http.Response, key string) *Error {
	if !HasToken(res.Header, "Upgrade", "websocket") {
		v := strings.Join(res.Header.Values("Upgrade"), ", ")
		return refuse(http.StatusBadGateway, "backend_invalid", "Upgrade", v,
			"backend answered 101 with Upgrade %q, not websocket", v)
	}
	if !HasToken(res.Header, "Connection", "upgrade") {
		v := strings.Join(res.Header.Values("Connection"), ", ")
		return refuse(http.StatusBadGateway, "backend_invalid", "Connection", v,
			"backend answered 101 with Connection %q, not upgrade", v)
	}
	if got, want := res.Header.Get("Sec-WebSocket-Accept"), AcceptKey(key); got != want {
		return refuse(http.StatusBadGateway, "backend_invalid", "Sec-WebSocket-Accept", got,
			"backend answered 101 with a wrong Sec-WebSocket-Accept %q (want %q)", got, want)
	}
	return nil
}
