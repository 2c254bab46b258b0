//lint:file-ignore SA1019 x/net/http2.Transport is the only Go client that sends extended CONNECT (RFC 8441)

package websocket_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/caddy-websocket/caddy-websocket/internal/frame"
	"github.com/caddy-websocket/caddy-websocket/internal/wstest"
)

// h2Stream is a client's RFC 8441 stream as a net.Conn for wstest.Peer:
// writes go to the request body, reads come from the response body
// through a pipe (which gives them deadlines).
type h2Stream struct {
	net.Conn // the pipe's reading end
	body     *io.PipeWriter
	cancel   context.CancelFunc
	ended    chan error // how the response body ended: nil at END_STREAM
	res      *http.Response
}

func (s *h2Stream) Write(p []byte) (int, error) { return s.body.Write(p) }

// dialH2 opens a WebSocket over HTTP/2 extended CONNECT (x/net's client)
// to the site at addr. With read false, the response body is never read:
// the client stops reading, and HTTP/2 flow control holds the server's
// writes up.
func dialH2(t *testing.T, addr, path string, read bool, extra ...http.Header) (*wstest.Peer, *h2Stream) {
	t.Helper()
	// net/http's own client refuses the :protocol pseudo-header (extended
	// CONNECT); x/net's, deprecated for everything else, sends it.
	tr := &http2.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, ServerName: "localhost"}}
	t.Cleanup(tr.CloseIdleConnections)
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	req, err := http.NewRequestWithContext(ctx, http.MethodConnect, "https://"+addr+path, pr)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = "localhost"
	req.Header.Set(":protocol", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	for _, h := range extra {
		for k, v := range h {
			req.Header[k] = v
		}
	}
	res, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatalf("extended CONNECT: %v", err)
	}
	if res.StatusCode != http.StatusOK {
		t.Fatalf("extended CONNECT answered %s", res.Status)
	}
	ours, theirs := net.Pipe()
	s := &h2Stream{Conn: ours, body: pw, cancel: cancel, ended: make(chan error, 1), res: res}
	if read {
		go func() {
			_, err := io.Copy(theirs, res.Body)
			theirs.Close()
			s.ended <- err
		}()
	}
	t.Cleanup(func() { cancel(); pw.Close(); ours.Close() })
	return &wstest.Peer{Conn: s, R: bufio.NewReader(s), Masked: true}, s
}

// TestHTTP2 opens WebSockets over HTTP/2 (RFC 8441) with x/net's client
// in a child process whose Caddy runs with GODEBUG=http2xconnect=1, in
// both modes: echo, the gateway's Ping on the stream, Close codes end to
// end, a client that stops reading cut off by write_timeout (the stream's
// write deadline, HTTP/2 flow control holding the writes), and a reset
// stream; the backend hears 1001 for the last two.
func TestHTTP2(t *testing.T) {
	if inChild(t, "GODEBUG=http2xconnect=1") {
		return
	}
	echo, closes := closingEcho(t)
	flood, flooded := floodingBackend(t)
	addr := httpsSite(t, fmt.Sprintf(`websocket /tunnel %[1]s {
			client {
				keepalive 300ms
			}
		}
		websocket /terminate %[1]s {
			mode terminate
			client {
				keepalive 300ms
			}
		}
		websocket /tunnel-flood %[2]s {
			client {
				write_timeout 1s
			}
		}
		websocket /terminate-flood %[2]s {
			mode terminate
			client {
				write_timeout 1s
			}
		}`, echo.Addr, flood.Addr))
	for _, mode := range []string{"tunnel", "terminate"} {
		t.Run(mode, func(t *testing.T) {
			p, _ := dialH2(t, addr, "/"+mode, true)
			exerciseStream(t, p, closes)

			// A client that stops reading.
			dialH2(t, addr, "/"+mode+"-flood", false)
			start := time.Now()
			select {
			case code := <-flooded:
				if code != frame.CloseGoingAway {
					t.Fatalf("flooding backend got Close %d, want 1001", code)
				}
				t.Logf("%s over h2: the backend was told after %v that the client stopped reading", mode, time.Since(start).Round(10*time.Millisecond))
			case <-time.After(15 * time.Second):
				t.Fatal("the backend was not told that the client stopped reading")
			}

			// A stream the client resets.
			p, s := dialH2(t, addr, "/"+mode, true)
			p.WriteFrame(frame.OpText, []byte("x"))
			p.ReadFrame(5 * time.Second)
			// The client resets the stream (RST_STREAM CANCEL) once its
			// request body's writer sees the cancellation: when the body fails.
			s.cancel()
			s.body.CloseWithError(context.Canceled)
			resetAt := time.Now()
			select {
			case code := <-closes:
				t.Logf("%s over h2: backend told %v after the reset", mode, time.Since(resetAt))
				if code != frame.CloseGoingAway {
					t.Fatalf("backend got Close %d after the reset, want 1001", code)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("backend not told of the reset stream")
			}
		})
	}
	for _, e := range wstest.LogEntries(t, "websocket connected") {
		if e["proto"] != "h2" {
			t.Errorf("connection logged with proto %v, want h2", e["proto"])
		}
	}
}

// TestStreamsOutliveCaddyIdleTimeouts: Caddy 2.11 puts a read and a write
// idle timeout on every request (a minute by default; `timeouts {
// read_body_idle … write_idle … }`, 1 s here); a WebSocket stream
// (HTTP/2 here, HTTP/3 too without -race) whose client is silent for
// longer than them lives on, as a hijacked HTTP/1.1 connection does: the
// gateway's own policies govern its silence.
func TestStreamsOutliveCaddyIdleTimeouts(t *testing.T) {
	if inChild(t, "GODEBUG=http2xconnect=1") {
		return
	}
	echo := wstest.NewBackend(t, nil, func(p *wstest.Peer) {
		for {
			f, err := p.ReadFrame(30 * time.Second)
			if err != nil || f.Op == frame.OpClose {
				return
			}
			p.WriteFrame(f.Op, f.Payload)
		}
	})
	addr := httpsSiteGlobal(t, "\tservers {\n\t\ttimeouts {\n\t\t\tread_body_idle 1s\n\t\t\twrite_idle 1s\n\t\t}\n\t}",
		fmt.Sprintf(`websocket /tunnel %[1]s {
			client {
				keepalive off
			}
		}
		websocket /terminate %[1]s {
			mode terminate
			client {
				keepalive off
			}
		}`, echo.Addr))
	protos := []string{"h2", "h3"}
	if raceEnabled {
		protos = protos[:1] // caddytls races with QUIC handshakes under -race
	}
	for _, proto := range protos {
		for _, mode := range []string{"tunnel", "terminate"} {
			t.Run(proto+"/"+mode, func(t *testing.T) {
				var p *wstest.Peer
				if proto == "h2" {
					p, _ = dialH2(t, addr, "/"+mode, true)
				} else {
					var res *http.Response
					if p, res, _ = dialH3(t, addr, "/"+mode, nil); p == nil {
						t.Fatalf("extended CONNECT answered %d", res.StatusCode)
					}
				}
				for i, msg := range []string{"before", "after 2.5 s of silence"} {
					if i > 0 {
						time.Sleep(2500 * time.Millisecond)
					}
					p.WriteFrame(frame.OpText, []byte(msg))
					f, err := p.ReadFrame(5 * time.Second)
					if err != nil || string(f.Payload) != msg {
						t.Fatalf("%q: %v %q", msg, err, f.Payload)
					}
				}
			})
		}
	}
}
