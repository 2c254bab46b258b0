package websocket

import (
	"crypto/rand"
	"encoding/base64"
	"net"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// What the gateway sends the backend: the headers of the client's request
// it forwards, the request line, and the upgrade requests of its own.

// hopHeaders are removed from a forwarded upgrade request, as Caddy's
// reverse_proxy does; the gateway sets its own Connection and Upgrade.
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// forwardHeaders returns the headers of the backend's upgrade request: the
// client's, less hop-by-hop headers, with X-Forwarded-* set. The
// Sec-WebSocket-* headers are kept; the caller changes what its mode needs.
func forwardHeaders(r *http.Request) http.Header {
	hdr := r.Header.Clone()
	for _, c := range r.Header.Values("Connection") {
		for _, f := range strings.Split(c, ",") {
			if f = strings.TrimSpace(f); f != "" {
				hdr.Del(f)
			}
		}
	}
	for _, k := range hopHeaders {
		hdr.Del(k)
	}
	hdr.Set("Connection", "Upgrade")
	hdr.Set("Upgrade", "websocket")
	hdr.Del(":protocol") // an HTTP/2 extended CONNECT's, kept in the map by Go's server
	withoutResumeCookie(hdr)

	// Like reverse_proxy: extend X-Forwarded-* only when the request came
	// through a trusted proxy, otherwise replace what the client claimed.
	trusted, _ := caddyhttp.GetVar(r.Context(), caddyhttp.TrustedProxyVarKey).(bool)
	clientIP, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		clientIP = r.RemoteAddr
	}
	if prior := r.Header.Values("X-Forwarded-For"); trusted && len(prior) > 0 {
		hdr.Set("X-Forwarded-For", strings.Join(prior, ", ")+", "+clientIP)
	} else {
		hdr.Set("X-Forwarded-For", clientIP)
	}
	proto := "http"
	if r.TLS != nil {
		proto = "https"
	}
	if !trusted || hdr.Get("X-Forwarded-Proto") == "" {
		hdr.Set("X-Forwarded-Proto", proto)
	}
	if !trusted || hdr.Get("X-Forwarded-Host") == "" {
		hdr.Set("X-Forwarded-Host", r.Host)
	}
	return hdr
}

// requestTarget is the request line's target and Host for the backend: the
// client's own, so the backend sees the path and query it was asked for.
func requestTarget(r *http.Request) (uri, host string) {
	uri = r.RequestURI
	if uri == "" || strings.Contains(uri, "://") || r.Method == http.MethodConnect {
		uri = r.URL.RequestURI()
	}
	return uri, r.Host
}

// writeRequest renders an upgrade request.
func writeRequest(uri, host string, hdr http.Header) []byte {
	n := len(uri) + len(host) + 32
	for k, vs := range hdr {
		for _, v := range vs {
			n += len(k) + len(v) + 4
		}
	}
	b := make([]byte, 0, n)
	b = append(b, "GET "...)
	b = append(b, uri...)
	b = append(b, " HTTP/1.1\r\nHost: "...)
	b = append(b, host...)
	b = append(b, "\r\n"...)
	for k, vs := range hdr {
		for _, v := range vs {
			if strings.ContainsAny(v, "\r\n") {
				continue // cannot come from a parsed request; never split a header
			}
			b = append(b, k...)
			b = append(b, ": "...)
			b = append(b, v...)
			b = append(b, "\r\n"...)
		}
	}
	return append(b, "\r\n"...)
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
