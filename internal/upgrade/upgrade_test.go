package upgrade

import (
	"bufio"
	"net/http"
	"strings"
	"testing"
)

func req(t testing.TB, raw string) *http.Request {
	r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw)))
	if err != nil {
		t.Fatalf("%q: %v", raw, err)
	}
	return r
}

const good = "GET /chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
	"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"

func TestAcceptKey(t *testing.T) {
	// The example of RFC 6455 §1.3.
	if got := AcceptKey("dGhlIHNhbXBsZSBub25jZQ=="); got != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Fatal(got)
	}
}

func TestValidateRequest(t *testing.T) {
	if err := ValidateRequest(req(t, good)); err != nil {
		t.Fatalf("valid request refused: %v", err)
	}
	cases := []struct {
		name, from, to string
		status         int
		header         string
	}{
		{"method", "GET", "PUT", 400, ""},
		{"http/1.0", "HTTP/1.1", "HTTP/1.0", 400, ""},
		{"upgrade missing", "Upgrade: websocket\r\n", "", 400, "Upgrade"},
		{"upgrade other", "Upgrade: websocket", "Upgrade: h2c", 400, "Upgrade"},
		{"connection", "Connection: Upgrade", "Connection: close", 400, "Connection"},
		{"version 8", "Version: 13", "Version: 8", 426, "Sec-WebSocket-Version"},
		{"version abc", "Version: 13", "Version: abc", 426, "Sec-WebSocket-Version"},
		{"version twice", "Version: 13\r\n", "Version: 13\r\nSec-WebSocket-Version: 13\r\n", 400, "Sec-WebSocket-Version"},
		{"key missing", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "", 400, "Sec-WebSocket-Key"},
		{"key not base64", "dGhlIHNhbXBsZSBub25jZQ==", "!!!!!!!!!!!!!!!!!!!!!!==", 400, "Sec-WebSocket-Key"},
		{"key 15 bytes", "dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25j", 400, "Sec-WebSocket-Key"},
		{"key twice", "Version: 13\r\n", "Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", 400, "Sec-WebSocket-Key"},
		{"content-length", "Version: 13\r\n", "Version: 13\r\nContent-Length: 3\r\n", 400, "Content-Length"},
		{"chunked", "Version: 13\r\n", "Version: 13\r\nTransfer-Encoding: chunked\r\n", 400, "Transfer-Encoding"},
	}
	for _, c := range cases {
		r := req(t, strings.Replace(good, c.from, c.to, 1))
		err := ValidateRequest(r)
		if err == nil || err.Status != c.status || err.Header != c.header || err.Reason == "" {
			t.Errorf("%s: got %+v, want status %d header %q", c.name, err, c.status, c.header)
		}
	}
	for _, ok := range []string{"Connection: keep-alive, Upgrade", "Connection: UPGRADE", "Connection: foo,upgrade ,bar"} {
		if err := ValidateRequest(req(t, strings.Replace(good, "Connection: Upgrade", ok, 1))); err != nil {
			t.Errorf("%s refused: %v", ok, err)
		}
	}
	if err := ValidateRequest(req(t, strings.Replace(good, "Upgrade: websocket", "Upgrade: WebSocket", 1))); err != nil {
		t.Errorf("Upgrade: WebSocket refused: %v", err)
	}
}

func TestIsWebSocket(t *testing.T) {
	if !IsWebSocket(req(t, good)) {
		t.Fatal("a handshake is not a websocket request")
	}
	lost := strings.Replace(good, "Upgrade: websocket\r\n", "", 1)
	if !IsWebSocket(req(t, lost)) {
		t.Fatal("a handshake that lost its Upgrade header must still be ours, to get a clear 400")
	}
	if IsWebSocket(req(t, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")) || IsWebSocket(req(t, "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n")) {
		t.Fatal("plain and h2c requests are not ours")
	}
}

func TestOrigins(t *testing.T) {
	o, err := ParseOrigins([]string{"https://app.example.com", "partner.example:8443", "null"})
	if err != nil {
		t.Fatal(err)
	}
	withOrigin := func(host, origin string) *http.Request {
		r := req(t, strings.Replace(good, "Host: example.com", "Host: "+host, 1))
		if origin != "" {
			r.Header.Set("Origin", origin)
		}
		return r
	}
	allowed := [][2]string{
		{"example.com", ""},
		{"example.com", "https://example.com"},
		{"example.com", "http://example.com:80"},
		{"example.com:8080", "http://example.com:8080"},
		{"example.com", "https://app.example.com"},
		{"example.com", "https://app.example.com:443"},
		{"example.com", "http://partner.example:8443"},
		{"example.com", "null"},
		{"EXAMPLE.com", "https://Example.COM"},
	}
	for _, a := range allowed {
		if err := o.Check(withOrigin(a[0], a[1])); err != nil {
			t.Errorf("host %s origin %s refused: %v", a[0], a[1], err)
		}
	}
	refused := [][2]string{
		{"example.com", "https://evil.com"},
		{"example.com", "https://example.com.evil.com"},
		{"example.com", "https://app.example.com:444"},
		{"example.com:8080", "http://example.com:8081"},
		{"example.com", "http://partner.example"},
		{"example.com", "not a url"},
	}
	for _, r := range refused {
		if err := o.Check(withOrigin(r[0], r[1])); err == nil || err.Status != 403 {
			t.Errorf("host %s origin %s allowed: %v", r[0], r[1], err)
		}
	}
	var zero Origins
	if err := zero.Check(withOrigin("example.com", "null")); err == nil {
		t.Error("null allowed by default")
	}
	all, _ := ParseOrigins([]string{"*"})
	if err := all.Check(withOrigin("example.com", "https://anything.test")); err != nil {
		t.Error("* refused")
	}
	for _, bad := range []string{"https://x.com/path", "", "x.com/y", "https://"} {
		if _, err := ParseOrigins([]string{bad}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// FuzzValidateRequest: whatever request Go's parser accepts, validation
// answers without panicking, and a refusal always has a status and reason.
func FuzzValidateRequest(f *testing.F) {
	f.Add(good)
	f.Add(strings.Replace(good, "13", "8", 1))
	f.Add("GET / HTTP/1.0\r\nUpgrade: websocket\r\n\r\n")
	f.Add("GET / HTTP/1.1\r\nHost: a\r\nOrigin: http://a\r\nSec-WebSocket-Key: x\r\n\r\n")
	f.Fuzz(func(t *testing.T, raw string) {
		r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw)))
		if err != nil {
			return
		}
		IsWebSocket(r)
		if e := ValidateRequest(r); e != nil && (e.Status < 400 || e.Reason == "") {
			t.Fatalf("refusal without status or reason: %+v", e)
		}
		var o Origins
		if e := o.Check(r); e != nil && e.Status != 403 {
			t.Fatalf("origin refusal %+v", e)
		}
	})
}
