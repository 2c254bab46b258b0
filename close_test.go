package websocket_test

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/caddy-websocket/caddy-websocket/internal/frame"
	"github.com/caddy-websocket/caddy-websocket/internal/wstest"
)

// closingBackend answers a Close with a Close and hangs up, as servers do;
// with first set it starts the closing handshake itself once the
// connection is up.
func closingBackend(t *testing.T, first bool) *wstest.Backend {
	return wstest.NewBackend(t, nil, func(p *wstest.Peer) {
		if first {
			time.Sleep(100 * time.Millisecond)
			p.WriteFrame(frame.OpClose, wstest.ClosePayload(1000, "backend done"))
		}
		for {
			f, err := p.ReadFrame(10 * time.Second)
			if err != nil {
				return
			}
			if f.Op == frame.OpClose {
				if !first {
					p.WriteFrame(frame.OpClose, f.Payload)
				}
				return
			}
		}
	})
}

// TestClosePromptly: once the closing handshake is complete, the gateway
// closes the client's TCP connection at once (RFC 6455 §7.1.1: the server
// closes first), whatever Caddy wrapped the connection in: a site with an
// access log and the metrics option hands the gateway its byte-counting
// hijack wrapper. CloseGrace (5 s) only bounds a peer that never answers,
// so "within 100 ms" tells the two apart. Each closer: the client, the
// backend, and the gateway (admin DELETE, idle timeout, max lifetime).
// Over wss the TCP FIN must follow TLS's close_notify at once too: a peer
// whose TLS stack does not act on close_notify waits for the TCP close.
func TestClosePromptly(t *testing.T) {
	for _, site := range []string{"plain", "log+metrics", "wss"} {
		for _, mode := range []string{"tunnel", "terminate"} {
			for _, closer := range []string{"client", "backend", "admin", "idle", "lifetime"} {
				t.Run(site+"/"+mode+"/"+closer, func(t *testing.T) {
					testClosePromptly(t, site, mode, closer)
				})
			}
		}
	}
}

func testClosePromptly(t *testing.T, site, mode, closer string) {
	backend := closingBackend(t, closer == "backend")
	global, logDirective, scheme := "", "", "http://127.0.0.1"
	switch site {
	case "log+metrics":
		global, logDirective = "\tmetrics", "log {\n\t\t\toutput discard\n\t\t}"
	case "wss":
		ca := wstest.NewCA(t)
		global, logDirective, scheme = "\tskip_install_trust\n\tauto_https disable_redirects", "tls "+ca.CertFile+" "+ca.KeyFile, "https://localhost"
	}
	opts := ""
	switch closer {
	case "idle":
		opts = "client {\n\t\t\t\tidle_timeout 300ms\n\t\t\t}"
	case "lifetime":
		opts = "max_lifetime 300ms"
	}
	addr, admin := wstest.StartCaddyGlobal(t, global, fmt.Sprintf(`%s:{PORT} {
		%s
		websocket %s {
			mode %s
			%s
		}
	}`, scheme, logDirective, backend.Addr, mode, opts), closer == "admin")
	var p *wstest.Peer
	var raw net.Conn // under TLS, the TCP connection
	if site == "wss" {
		p, raw = dialTLS(t, addr)
	} else {
		var res *http.Response
		if p, res = wstest.Dial(t, addr, ""); p == nil {
			t.Fatalf("upgrade: %d", res.StatusCode)
		}
	}

	switch closer {
	case "client":
		p.WriteFrame(frame.OpClose, wstest.ClosePayload(1000, "bye"))
	case "admin":
		id := ""
		for deadline := time.Now().Add(5 * time.Second); id == "" && time.Now().Before(deadline); {
			var list struct {
				Connections []struct{ ID string } `json:"connections"`
			}
			adminJSON(t, "GET", "http://"+admin+"/websocket/connections", &list)
			if len(list.Connections) > 0 {
				id = list.Connections[0].ID
			}
		}
		if st := adminJSON(t, "DELETE", "http://"+admin+"/websocket/connections/"+id+"?code=4000&reason=bye", nil); st != 200 {
			t.Fatalf("DELETE %q: %d", id, st)
		}
	}

	// The other end's Close arrives; a client that did not start the
	// handshake answers it.
	f, err := p.ReadFrame(5 * time.Second)
	for err == nil && f.Op != frame.OpClose {
		f, err = p.ReadFrame(5 * time.Second)
	}
	if err != nil {
		t.Fatalf("waiting for Close: %v", err)
	}
	if closer != "client" {
		p.WriteFrame(frame.OpClose, f.Payload)
	}
	done := time.Now()
	p.SetReadDeadline(time.Now().Add(6 * time.Second))
	n, err := io.Copy(io.Discard, p.R)
	el := time.Since(done)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("TCP still open %v after the closing handshake", el)
	}
	if err != nil || n != 0 {
		t.Fatalf("after Close: %d more bytes, %v", n, err)
	}
	if raw != nil {
		// TLS's close_notify ended the stream above; the TCP FIN must be
		// right behind it.
		raw.SetReadDeadline(time.Now().Add(6 * time.Second))
		_, err := io.Copy(io.Discard, raw)
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("TCP still open %v after close_notify", time.Since(done))
		}
		el = time.Since(done)
	}
	code, reason, _ := frame.ParseClose(f.Payload)
	t.Logf("Close %d %q; TCP closed %v after the handshake", code, reason, el)
	if el > 100*time.Millisecond {
		t.Fatalf("TCP closed %v after the closing handshake, want < 100ms", el)
	}
}

// dialTLS opens a wss connection to addr (a localhost site), keeping hold
// of the TCP connection under TLS.
func dialTLS(t *testing.T, addr string) (*wstest.Peer, net.Conn) {
	t.Helper()
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	tc := tls.Client(raw, &tls.Config{InsecureSkipVerify: true, ServerName: "localhost", NextProtos: []string{"http/1.1"}})
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(tc, wstest.UpgradeRequest("localhost", "/ws", wstest.Key()))
	br := bufio.NewReader(tc)
	res, err := http.ReadResponse(br, nil)
	if err != nil || res.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("wss upgrade: %v %v", res, err)
	}
	tc.SetDeadline(time.Time{})
	return &wstest.Peer{Conn: tc, R: br, Masked: true}, raw
}
