package websocket_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/caddy-websocket/caddy-websocket/internal/wstest"
)

// TestHostileHandshakes sends malformed, hostile and unusual-but-valid
// upgrade requests, each with the exact status expected, and checks that
// no refused one reached the backend.
func TestHostileHandshakes(t *testing.T) {
	backend := wstest.NewBackend(t, nil, wstest.Drain(time.Second))
	addr := wstest.StartCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
		websocket %s
	}`, backend.Addr))
	const key = "dGhlIHNhbXBsZSBub25jZQ=="
	base := func(lines ...string) string {
		h := map[string]string{}
		var order []string
		for _, l := range []string{"Host: " + addr, "Upgrade: websocket", "Connection: Upgrade",
			"Sec-WebSocket-Key: " + key, "Sec-WebSocket-Version: 13"} {
			name, _, _ := strings.Cut(l, ":")
			h[name] = l
			order = append(order, name)
		}
		var extra []string
		for _, l := range lines {
			name, _, _ := strings.Cut(l, ":")
			if _, ok := h[name]; ok && !strings.HasPrefix(l, "+") {
				h[name] = l // replace; "-Name" drops it; "+Name: v" adds a second one
				continue
			}
			extra = append(extra, strings.TrimPrefix(l, "+"))
		}
		var b strings.Builder
		b.WriteString("GET /ws HTTP/1.1\r\n")
		for _, name := range order {
			if v := h[name]; !strings.HasSuffix(v, ":") {
				b.WriteString(v + "\r\n")
			}
		}
		for _, l := range extra {
			if !strings.HasPrefix(l, "-") {
				b.WriteString(l + "\r\n")
			}
		}
		b.WriteString("\r\n")
		return b.String()
	}
	drop := func(name string) string { return name + ":" } // base() skips "Name:" lines
	method := func(m string) string { return strings.Replace(base(), "GET ", m+" ", 1) }
	host := strings.TrimPrefix(addr, "127.0.0.1:")
	cases := []struct {
		name   string
		req    string
		status int
	}{
		// Valid variants: upgraded.
		{"plain", base(), 101},
		{"Connection: keep-alive, Upgrade", base("Connection: keep-alive, Upgrade"), 101},
		{"Connection: Upgrade, keep-alive", base("Connection: Upgrade, keep-alive"), 101},
		{"Connection in two headers", base("Connection: keep-alive", "+Connection: Upgrade"), 101},
		{"Upgrade: WebSocket", base("Upgrade: WebSocket"), 101},
		{"Upgrade: websocket, h2c", base("Upgrade: websocket, h2c"), 101},
		{"Upgrade twice", base("+Upgrade: websocket"), 101},
		{"Content-Length: 0", base("Content-Length: 0"), 101},
		{"key with spaces around", base("Sec-WebSocket-Key:   " + key + "  "), 101},
		{"Origin of the same host", base("Origin: http://127.0.0.1:" + host), 101},
		{"Origin of the same host, upper case", base("Origin: HTTP://127.0.0.1:" + host), 101},
		{"Origin with trailing slash", base("Origin: http://127.0.0.1:" + host + "/"), 101},
		{"no Origin", base(), 101},
		// Refused before any backend is dialled.
		{"POST", method("POST"), 400},
		{"PUT", method("PUT"), 400},
		{"HEAD", method("HEAD"), 400},
		{"OPTIONS", method("OPTIONS"), 400},
		{"HTTP/1.0", strings.Replace(base(), "HTTP/1.1", "HTTP/1.0", 1), 400},
		{"no Upgrade header", base(drop("Upgrade")), 400},
		{"Upgrade: websockets", base("Upgrade: websockets"), 400},
		{"Upgrade: web socket", base("Upgrade: web socket"), 400},
		{"no Connection header", base(drop("Connection")), 400},
		{"Connection: close", base("Connection: close"), 400},
		{"Connection: upgraded", base("Connection: upgraded"), 400},
		{"version 8", base("Sec-WebSocket-Version: 8"), 426},
		{"version 0", base("Sec-WebSocket-Version: 0"), 426},
		{"version abc", base("Sec-WebSocket-Version: abc"), 426},
		{"version 13, 8", base("Sec-WebSocket-Version: 13, 8"), 426},
		{"version empty", base("Sec-WebSocket-Version: "), 426},
		{"version twice", base("+Sec-WebSocket-Version: 13"), 400},
		{"no version", base(drop("Sec-WebSocket-Version")), 400},
		{"no key", base(drop("Sec-WebSocket-Key")), 400},
		{"key of 15 bytes", base("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25j"), 400},
		{"key of 17 bytes", base("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZTE="), 400},
		{"key not base64", base("Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!=="), 400},
		{"key twice", base("+Sec-WebSocket-Key: " + key), 400},
		{"key of 1 KB", base("Sec-WebSocket-Key: " + strings.Repeat("A", 1024)), 400},
		{"body (Content-Length)", base("Content-Length: 5") + "hello", 400},
		{"body (chunked)", base("Transfer-Encoding: chunked") + "5\r\nhello\r\n0\r\n\r\n", 400},
		{"smuggled request in the body", base("Content-Length: 39") + "GET /admin HTTP/1.1\r\nHost: internal\r\n\r\n", 400},
		{"Content-Length and Transfer-Encoding", base("Content-Length: 6", "Transfer-Encoding: chunked") + "0\r\n\r\n", 400},
		{"Transfer-Encoding: gzip, chunked", base("Transfer-Encoding: gzip, chunked") + "0\r\n\r\n", 501},
		{"no Host", strings.Replace(base(), "Host: "+addr+"\r\n", "", 1), 400},
		{"Origin of another host", base("Origin: https://evil.example"), 403},
		{"Origin with our host as a prefix", base("Origin: http://127.0.0.1:" + host + ".evil.example"), 403},
		{"Origin with our host in the path", base("Origin: http://evil.example/127.0.0.1:" + host), 403},
		{"Origin with our host as userinfo", base("Origin: http://127.0.0.1:" + host + "@evil.example"), 403},
		{"Origin of another port", base("Origin: http://127.0.0.1:1"), 403},
		{"Origin null", base("Origin: null"), 403},
		{"Origin garbage", base("Origin: %zz"), 403},
		{"header of 2 MB", base("X-Junk: " + strings.Repeat("x", 2<<20)), 431},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := backend.Accepted.Load()
			p, res := wstest.Dial(t, addr, tc.req)
			if res.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", res.StatusCode, tc.status)
			}
			dialled := backend.Accepted.Load() - before
			if (p != nil) != (tc.status == 101) || (tc.status != 101 && dialled != 0) {
				t.Fatalf("upgraded %v, backend dialled %d times", p != nil, dialled)
			}
		})
	}
	t.Logf("%d hostile or unusual handshakes", len(cases))
}
