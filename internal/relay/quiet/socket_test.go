package quiet

import (
	"io"
	"net"
	"testing"

	"github.com/pires/go-proxyproto"

	"github.com/caddy-websocket/caddy-websocket/internal/tcptest"
)

// A PROXY protocol connection is looked through once its header reader is
// gone (after the first read, as the HTTP server does it), not before: the
// bytes behind the header may still be in that reader. If go-proxyproto
// changes the field this relies on, the second check fails here, not in
// production (where the connection would just stay wrapped).
func TestUnderProxyProtocol(t *testing.T) {
	near, far := tcptest.Pair(t)
	pc := proxyproto.NewConn(near)
	if got := Under(pc); got != pc {
		t.Fatalf("before any read: %T, want the PROXY protocol connection", got)
	}
	if _, err := io.WriteString(far, "PROXY TCP4 192.0.2.7 127.0.0.1 40000 80\r\nGET / HTTP/1.1\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, err := pc.Read(buf)
	if err != nil || string(buf[:n]) != "GET / HTTP/1.1\r\n\r\n" {
		t.Fatalf("first read: %q %v", buf[:n], err)
	}
	if got := pc.RemoteAddr().String(); got != "192.0.2.7:40000" {
		t.Fatalf("remote %s", got)
	}
	tc, ok := TCP(pc)
	if !ok || tc != near {
		t.Fatalf("after the header was read: %T %v, want the TCP socket", Under(pc), ok)
	}
	// What comes next is read from the socket itself.
	io.WriteString(far, "more")
	n, _ = tc.Read(buf)
	if string(buf[:n]) != "more" {
		t.Fatalf("socket read %q", buf[:n])
	}
}

// Anything else is returned as it is.
func TestUnderOther(t *testing.T) {
	near, _ := tcptest.Pair(t)
	type wrapped struct{ net.Conn }
	w := wrapped{near}
	if got := Under(w); got != net.Conn(w) {
		t.Fatalf("an unknown wrapper was looked through: %T", got)
	}
	if _, ok := TCP(w); ok {
		t.Fatal("TCP under an unknown wrapper")
	}
	if tc, ok := TCP(near); !ok || tc != near {
		t.Fatal("a TCP socket is its own socket")
	}
}
