package websocket_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/caddy-websocket/caddy-websocket/internal/frame"
	"github.com/caddy-websocket/caddy-websocket/internal/overhttp"
	"github.com/caddy-websocket/caddy-websocket/internal/wstest"
)

// streamConn is an HTTP/3 request stream as a net.Conn, so wstest.Peer
// can speak WebSocket frames on it.
type streamConn struct {
	*http3.RequestStream
	local, remote net.Addr
}

func (s streamConn) LocalAddr() net.Addr  { return s.local }
func (s streamConn) RemoteAddr() net.Addr { return s.remote }

// dialH3 opens a WebSocket over HTTP/3 (RFC 9220) to Caddy at addr
// (UDP, same port as its TLS listener) and returns the peer, the response
// and the stream (to reset it).
func dialH3(t *testing.T, addr, path string, hdr http.Header) (*wstest.Peer, *http.Response, *http3.RequestStream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tlsConf := &tls.Config{InsecureSkipVerify: true, ServerName: "localhost", NextProtos: []string{http3.NextProtoH3}}
	// Caddy's internal CA issues the site's certificate just after start.
	qc, err := quic.DialAddr(ctx, addr, tlsConf, &quic.Config{})
	for i := 0; err != nil && i < 50; i++ {
		time.Sleep(100 * time.Millisecond)
		qc, err = quic.DialAddr(ctx, addr, tlsConf, &quic.Config{})
	}
	if err != nil {
		t.Fatalf("QUIC dial: %v", err)
	}
	t.Cleanup(func() { qc.CloseWithError(0, "") })
	cc := (&http3.Transport{}).NewClientConn(qc)
	select {
	case <-cc.ReceivedSettings():
	case <-ctx.Done():
		t.Fatal("no SETTINGS from the server")
	}
	if !cc.Settings().EnableExtendedConnect {
		t.Fatal("server does not advertise extended CONNECT")
	}
	str, err := cc.OpenRequestStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if hdr == nil {
		hdr = http.Header{}
	}
	if hdr.Get("Sec-WebSocket-Version") == "" {
		hdr.Set("Sec-WebSocket-Version", "13")
	}
	u := &url.URL{Scheme: "https", Host: "localhost", Path: path}
	req := &http.Request{Method: http.MethodConnect, Proto: "websocket", ProtoMajor: 3, URL: u, Host: "localhost", Header: hdr}
	if err := str.SendRequestHeader(req); err != nil {
		t.Fatal(err)
	}
	res, err := str.ReadResponse()
	if err != nil {
		t.Fatalf("response: %v", err)
	}
	if res.StatusCode != http.StatusOK {
		return nil, res, str
	}
	p := &wstest.Peer{Conn: streamConn{str, qc.LocalAddr(), qc.RemoteAddr()}, Masked: true}
	p.R = bufio.NewReader(p.Conn)
	return p, res, str
}

// httpsSite is a Caddy site as production runs it: HTTPS, HTTP/1.1, HTTP/2
// and HTTP/3, an access log and metrics. The certificate is a test CA's,
// loaded before the listeners accept: Caddy's tls app races with
// handshakes that come while it starts (its TLS.Start writes what a
// handshake's event reads), which an internal CA's issuance makes likely.
func httpsSite(t *testing.T, body string) string {
	t.Helper()
	return httpsSiteGlobal(t, "", body)
}

// httpsSiteGlobal is httpsSite with more global options.
func httpsSiteGlobal(t *testing.T, global, body string) string {
	t.Helper()
	ca := wstest.NewCA(t)
	addr, _ := wstest.StartCaddyGlobal(t, "\tskip_install_trust\n\tauto_https disable_redirects\n\tmetrics\n"+global, `https://localhost:{PORT} {
		tls `+ca.CertFile+` `+ca.KeyFile+`
		log {
			output discard
		}
		`+body+`
	}`, false)
	return addr
}

// TestHTTP3 opens WebSockets over HTTP/3 (RFC 9220, quic-go's client, the
// version Caddy pins) through the gateway in both modes: echo, the
// gateway's keepalive Ping on the stream, Close codes end to end, and a
// stream reset, which the backend sees as the client going away (1001).
func TestHTTP3(t *testing.T) {
	if raceEnabled {
		// Caddy's tls app emits an event on every QUIC handshake that reads
		// its module struct without synchronisation with its Start: the race
		// detector reports Caddy's race, not ours. scripts/test.sh runs this
		// test again without -race.
		t.Skip("caddytls races with QUIC handshakes under -race (Caddy's own); run without -race")
	}
	wstest.NoLeaks(t)
	backend, closes := closingEcho(t)
	addr := httpsSite(t, fmt.Sprintf(`websocket /tunnel %s {
			client {
				keepalive 300ms
			}
		}
		websocket /terminate %s {
			mode terminate
			client {
				keepalive 300ms
			}
		}`, backend.Addr, backend.Addr))
	for _, mode := range []string{"tunnel", "terminate"} {
		t.Run(mode, func(t *testing.T) {
			p, res, _ := dialH3(t, addr, "/"+mode, nil)
			if p == nil {
				t.Fatalf("extended CONNECT answered %d", res.StatusCode)
			}
			if res.Header.Get("Sec-WebSocket-Accept") != "" || res.Header.Get("Upgrade") != "" {
				t.Errorf("HTTP/1.1 upgrade headers on an HTTP/3 answer: %v", res.Header)
			}
			exerciseStream(t, p, closes)

			// A stream the client resets: the backend is told 1001.
			p, res, str := dialH3(t, addr, "/"+mode, nil)
			if p == nil {
				t.Fatalf("extended CONNECT answered %d", res.StatusCode)
			}
			p.WriteFrame(frame.OpText, []byte("x"))
			p.ReadFrame(5 * time.Second)
			str.CancelWrite(quic.StreamErrorCode(http3.ErrCodeRequestCanceled))
			str.CancelRead(quic.StreamErrorCode(http3.ErrCodeRequestCanceled))
			select {
			case code := <-closes:
				if code != frame.CloseGoingAway {
					t.Fatalf("backend got Close %d after the reset, want 1001", code)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("backend not told of the reset stream")
			}
		})
	}

	// The connections are logged (and listed, and counted) as HTTP/3.
	for _, e := range wstest.LogEntries(t, "websocket connected") {
		if e["proto"] != "h3" {
			t.Errorf("connection logged with proto %v, want h3", e["proto"])
		}
	}

	// Refusals are answered on the stream with the status and reason.
	p, res, _ := dialH3(t, addr, "/tunnel", http.Header{"Sec-Websocket-Version": {"8"}})
	if p != nil || res.StatusCode != http.StatusUpgradeRequired {
		t.Fatalf("version 8: %d, want 426", res.StatusCode)
	}
	p, res, _ = dialH3(t, addr, "/tunnel", http.Header{"Sec-Websocket-Key": {wstest.Key()}})
	if p != nil || res.StatusCode != http.StatusBadRequest {
		t.Fatalf("with a key: %d, want 400", res.StatusCode)
	}
}

// TestHTTP3ModeHTTP: mode http over an HTTP/3 stream: the client's
// messages reach the HTTP backend as events and come back, and a reset
// stream is a DISCONNECT.
func TestHTTP3ModeHTTP(t *testing.T) {
	if raceEnabled {
		t.Skip("caddytls races with QUIC handshakes under -race (Caddy's own); run without -race")
	}
	b := newEventsBackend(t, echoEvents)
	addr := httpsSite(t, fmt.Sprintf(`websocket %s {
			mode http
		}`, hostOf(b.Server)))
	p, res, str := dialH3(t, addr, "/", nil)
	if p == nil {
		t.Fatalf("extended CONNECT answered %d", res.StatusCode)
	}
	p.WriteFrame(frame.OpText, []byte("hello over h3"))
	f, err := p.ReadFrame(5 * time.Second)
	if err != nil || f.Op != frame.OpText || string(f.Payload) != "hello over h3" {
		t.Fatalf("echo: %v %v %q", err, f.Op, f.Payload)
	}
	str.CancelWrite(quic.StreamErrorCode(http3.ErrCodeRequestCanceled))
	str.CancelRead(quic.StreamErrorCode(http3.ErrCodeRequestCanceled))
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		reqs := b.requests()
		if last := reqs[len(reqs)-1].events; len(last) > 0 && last[len(last)-1].Type == overhttp.Disconnect {
			break
		}
		if time.Now().After(end) {
			t.Fatal("no DISCONNECT after the stream reset")
		}
	}
}

// TestHTTP3SlowClient: a client that stops reading its stream holds the
// gateway's writes up in QUIC flow control; after write_timeout the leg is
// closed (the stream is reset) and the backend is told 1001, in both
// modes, as for a socket (TestSlowClient).
func TestHTTP3SlowClient(t *testing.T) {
	if raceEnabled {
		t.Skip("caddytls races with QUIC handshakes under -race (Caddy's own); run without -race")
	}
	backend, closed := floodingBackend(t)
	addr := httpsSite(t, fmt.Sprintf(`websocket /tunnel %[1]s {
			client {
				write_timeout 1s
			}
		}
		websocket /terminate %[1]s {
			mode terminate
			client {
				write_timeout 1s
			}
		}`, backend.Addr))
	for _, mode := range []string{"tunnel", "terminate"} {
		t.Run(mode, func(t *testing.T) {
			p, res, _ := dialH3(t, addr, "/"+mode, nil)
			if p == nil {
				t.Fatalf("extended CONNECT answered %d", res.StatusCode)
			}
			start := time.Now()
			select {
			case code := <-closed:
				if code != frame.CloseGoingAway {
					t.Fatalf("backend got Close %d, want 1001", code)
				}
				t.Logf("%s: the backend was told after %v that the HTTP/3 client stopped reading", mode, time.Since(start).Round(10*time.Millisecond))
			case <-time.After(15 * time.Second):
				t.Fatal("the backend was not told that the client stopped reading")
			}
		})
	}
}

// exerciseStream runs a WebSocket stream through echo (5 B and 70 KB),
// the gateway's keepalive Ping in the silence after, and a Close 4000 that
// must come back and reach the backend (closes).
func exerciseStream(t *testing.T, p *wstest.Peer, closes <-chan frame.StatusCode) {
	t.Helper()
	for _, msg := range []string{"hello", string(make([]byte, 70000))} {
		p.WriteFrame(frame.OpText, []byte(msg))
		f, err := p.ReadFrame(5 * time.Second)
		for err == nil && f.Op == frame.OpPing {
			f, err = p.ReadFrame(5 * time.Second)
		}
		if err != nil || f.Op != frame.OpText || string(f.Payload) != msg {
			t.Fatalf("echo of %d bytes: %v %v %d bytes", len(msg), err, f.Op, len(f.Payload))
		}
	}
	// Silence: the gateway's keepalive comes on the stream.
	f, err := p.ReadFrame(3 * time.Second)
	if err != nil || f.Op != frame.OpPing {
		t.Fatalf("want the gateway's Ping, got %v %v", f.Op, err)
	}
	p.WriteFrame(frame.OpPong, f.Payload)
	p.WriteFrame(frame.OpClose, wstest.ClosePayload(4000, "bye"))
	for {
		f, err = p.ReadFrame(5 * time.Second)
		if err != nil || f.Op == frame.OpClose {
			break
		}
	}
	if code, _, _ := frame.ParseClose(f.Payload); err != nil || code != 4000 {
		t.Fatalf("Close: %d %v", code, err)
	}
	if code := <-closes; code != 4000 {
		t.Fatalf("backend got Close %d, want 4000", code)
	}
}

// closingEcho is a backend that echoes text and binary frames and reports
// the code of each Close it gets (answering it).
func closingEcho(t *testing.T) (*wstest.Backend, <-chan frame.StatusCode) {
	closes := make(chan frame.StatusCode, 10)
	b := wstest.NewBackend(t, nil, func(p *wstest.Peer) {
		for {
			f, err := p.ReadFrame(30 * time.Second)
			if err != nil {
				return
			}
			switch f.Op {
			case frame.OpText, frame.OpBinary:
				p.WriteFrame(f.Op, f.Payload)
			case frame.OpClose:
				code, _, _ := frame.ParseClose(f.Payload)
				closes <- code
				p.WriteFrame(frame.OpClose, f.Payload)
				return
			}
		}
	})
	return b, closes
}
