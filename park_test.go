package websocket_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/caddy-websocket/caddy-websocket/internal/wstest"
)

// TestQuietConnectionsPark checks the memory design: a connection that is
// quiet holds no goroutine (its legs wait in the shared epoll set), and
// wakes up for the next message, in both modes; also on a site as
// production runs it, with an access log and metrics on, where Caddy
// hands the hijacked connection wrapped, and behind an L4 balancer that
// speaks the PROXY protocol to Caddy's proxy_protocol listener wrapper
// (docs/FLEET.md), which wraps every connection too.
func TestQuietConnectionsPark(t *testing.T) {
	for _, site := range []string{"plain", "log+metrics", "wss", "proxy_protocol", "proxy_protocol+wss"} {
		t.Run(site, func(t *testing.T) { testQuietConnectionsPark(t, site) })
	}
}

func testQuietConnectionsPark(t *testing.T, site string) {
	wstest.NoLeaks(t)
	global, logDirective, scheme := "", "", "ws"
	siteAddr, backend, backendOpts := "http://127.0.0.1:{PORT}", hostOf(echoBackend(t)), ""
	dialer := websocket.DefaultDialer
	proxyProtocol := strings.HasPrefix(site, "proxy_protocol")
	switch site {
	case "log+metrics", "proxy_protocol":
		global, logDirective = "\tmetrics", "log {\n\t\t\toutput discard\n\t\t}"
	case "wss", "proxy_protocol+wss":
		// Both legs on TLS: a wss client on an HTTPS site with an access
		// log and metrics, and a wss backend.
		ca := wstest.NewCA(t)
		global = "\tskip_install_trust\n\tauto_https disable_redirects\n\tmetrics"
		logDirective = "tls " + ca.CertFile + " " + ca.KeyFile + "\n\t\tlog {\n\t\t\toutput discard\n\t\t}"
		siteAddr, scheme = "https://localhost:{PORT}", "wss"
		backend, backendOpts = "wss://"+tlsEcho(t, ca, false), "tls_trusted_ca_certs "+ca.CAFile
		backend = strings.Replace(backend, "127.0.0.1", "localhost", 1)
		dialer = &websocket.Dialer{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, HandshakeTimeout: 5 * time.Second}
	}
	if proxyProtocol {
		wrappers := "proxy_protocol {\n\t\t\t\tallow 127.0.0.0/8\n\t\t\t}"
		if site == "proxy_protocol+wss" {
			wrappers += "\n\t\t\ttls"
		}
		global += "\n\tservers {\n\t\tlistener_wrappers {\n\t\t\t" + wrappers + "\n\t\t}\n\t}"
		// Each connection starts with the header an L4 balancer
		// (HAProxy's send-proxy) puts in front of the client's bytes.
		d := *dialer
		d.NetDialContext = func(ctx context.Context, network, a string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, a)
			if err != nil {
				return nil, err
			}
			_, port, _ := net.SplitHostPort(a)
			if _, err := fmt.Fprintf(c, "PROXY TCP4 192.0.2.7 127.0.0.1 40000 %s\r\n", port); err != nil {
				c.Close()
				return nil, err
			}
			return c, nil
		}
		dialer = &d
	}
	addr, _ := wstest.StartCaddyGlobal(t, global, fmt.Sprintf(`%s {
		%s
		websocket /tunnel %s {
			%s
		}
		websocket /terminate %s {
			mode terminate
			%s
		}
	}`, siteAddr, logDirective, backend, backendOpts, backend, backendOpts), false)
	if strings.HasSuffix(site, "wss") {
		addr = strings.Replace(addr, "127.0.0.1", "localhost", 1)
	}
	for _, mode := range []string{"tunnel", "terminate"} {
		t.Run(mode, func(t *testing.T) {
			const n = 40
			conns := make([]*websocket.Conn, n)
			roundTrip := func(i int, msg string) {
				t.Helper()
				c := conns[i]
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				if err := c.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
					t.Fatal(err)
				}
				if _, got, err := c.ReadMessage(); err != nil || string(got) != msg {
					t.Fatalf("connection %d: %q, %v", i, got, err)
				}
			}
			for i := range conns {
				c, _, err := dialer.Dial(scheme+"://"+addr+"/"+mode, nil)
				for try := 0; err != nil && strings.HasSuffix(site, "wss") && try < 50; try++ {
					time.Sleep(100 * time.Millisecond) // the site's certificate is being issued
					c, _, err = dialer.Dial(scheme+"://"+addr+"/"+mode, nil)
				}
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { c.Close() })
				conns[i] = c
				roundTrip(i, fmt.Sprint("hello ", i))
			}
			// Legs park once quiet for ParkAfter (100ms).
			var g int
			for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
				if g = wstest.RelayGoroutines(); g == 0 {
					break
				}
			}
			if g != 0 {
				t.Fatalf("%d relay goroutines for %d quiet connections:\n%s", g, n, wstest.RelayStacks())
			}
			for i := range conns {
				roundTrip(i, fmt.Sprint("again ", i))
			}
			for _, c := range conns {
				c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""), time.Now().Add(time.Second))
				c.Close()
			}
		})
	}
	if proxyProtocol {
		// Looking through the PROXY protocol wrapper keeps the client's
		// address, which the request had.
		for _, e := range wstest.LogEntries(t, "websocket connected") {
			if e["remote"] != "192.0.2.7:40000" {
				t.Fatalf("connection logged from %v, want the PROXY header's 192.0.2.7:40000", e["remote"])
			}
		}
	}
}

// TestKeepaliveWhileParkedTLS: a quiet wss connection parks and still gets
// the gateway's keepalive pings on time, in both modes (a parked TLS leg's
// timer must end up as a ping, not as "nothing to read"), and holds no
// goroutine between them.
func TestKeepaliveWhileParkedTLS(t *testing.T) {
	wstest.NoLeaks(t)
	ca := wstest.NewCA(t)
	echo := echoBackend(t)
	addr, _ := wstest.StartCaddyGlobal(t, "\tskip_install_trust\n\tauto_https disable_redirects\n\tmetrics", fmt.Sprintf(`https://localhost:{PORT} {
		tls %s %s
		log {
			output discard
		}
		websocket /tunnel %s {
			client {
				keepalive 400ms
			}
		}
		websocket /terminate %s {
			mode terminate
			client {
				keepalive 400ms
			}
		}
	}`, ca.CertFile, ca.KeyFile, hostOf(echo), hostOf(echo)), false)
	addr = strings.Replace(addr, "127.0.0.1", "localhost", 1)
	dialer := &websocket.Dialer{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, HandshakeTimeout: 5 * time.Second}
	for _, mode := range []string{"tunnel", "terminate"} {
		c, _, err := dialer.Dial("wss://"+addr+"/"+mode, nil)
		if err != nil {
			t.Fatal(err)
		}
		pings := make(chan struct{}, 100)
		c.SetPingHandler(func(p string) error {
			pings <- struct{}{}
			return c.WriteControl(websocket.PongMessage, []byte(p), time.Now().Add(time.Second))
		})
		go c.ReadMessage()
		n := 0
		for end := time.After(2 * time.Second); n < 3; {
			select {
			case <-pings:
				n++
			case <-end:
				t.Fatalf("%s: %d pings in 2 s on a quiet wss connection with keepalive 400ms", mode, n)
			}
		}
		c.Close()
	}
}
