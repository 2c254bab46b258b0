package websocket_test

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/caddy-websocket/caddy-websocket/examples/legacychat"
	"github.com/caddy-websocket/caddy-websocket/internal/wstest"
)

// inChild runs the calling test again in a child process of the test
// binary with env added, and reports whether the caller is the parent (it
// then returns: the child did the work, and its failure is the parent's).
// Process-wide settings such as GODEBUG=http2xconnect=1 are read once at
// start, so a test that needs one cannot run in this process.
func inChild(t *testing.T, env ...string) bool {
	t.Helper()
	if os.Getenv("WSTEST_CHILD") == t.Name() {
		return false
	}
	pattern := ""
	for _, part := range strings.Split(t.Name(), "/") {
		pattern += "/^" + part + "$"
	}
	cmd := exec.Command(os.Args[0], "-test.run", pattern[1:], "-test.v", "-test.count=1")
	cmd.Env = append(append(os.Environ(), "WSTEST_CHILD="+t.Name()), env...)
	out, err := cmd.CombinedOutput()
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, ".go:") && !strings.Contains(line, "caddy log") {
			t.Log(strings.TrimSpace(line))
		}
	}
	if err != nil || !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Fatalf("child with %v: %v\n%s", env, err, out)
	}
	return true
}

// TestBrowserHTTPS: the chat page over HTTPS (a test CA's certificate), as Chromium
// opens its socket there: an HTTP/1.1 upgrade (101), and, with Caddy
// started with GODEBUG=http2xconnect=1, a stream on the page's HTTP/2
// connection (RFC 8441: 200). In both modes the members stay in the room
// through three times the backend's idle timeout. The protocol is read
// from the DevTools protocol's WebSocket handshake event.
func TestBrowserHTTPS(t *testing.T) {
	for _, proto := range []string{"h1", "h2"} {
		t.Run(proto, func(t *testing.T) {
			if proto == "h2" && inChild(t, "GODEBUG=http2xconnect=1") {
				return
			}
			testBrowserHTTPS(t, proto)
		})
	}
}

// TestHTTP3Browser: the same over HTTP/3, as Chromium opens WebSockets
// there with its EnableWebsocketsOverHttp3 feature (RFC 9220: a stream of
// the page's QUIC connection, answered 200). Without -race only, as
// TestHTTP3 (scripts/test.sh runs the TestHTTP3 tests again without it).
func TestHTTP3Browser(t *testing.T) {
	if raceEnabled {
		t.Skip("caddytls races with QUIC handshakes under -race (Caddy's own); run without -race")
	}
	testBrowserHTTPS(t, "h3")
}

func testBrowserHTTPS(t *testing.T, proto string) {
	const idle = 2 * time.Second
	chat := httptest.NewServer(legacychat.New(idle))
	defer chat.Close()
	ca := wstest.NewCA(t)
	site := func(port, mode string) string {
		return fmt.Sprintf(`https://localhost:{%[1]s} {
		tls %[4]s %[5]s
		log {
			output discard
		}
		websocket /ws %[2]s {
			mode %[3]s
			client {
				keepalive 300ms
			}
			backend {
				keepalive 300ms
			}
		}
		reverse_proxy %[2]s
	}
	`, port, hostOf(chat), mode, ca.CertFile, ca.KeyFile)
	}
	addrs := wstest.StartCaddyGlobalPorts(t, "\tskip_install_trust\n\tauto_https disable_redirects\n\tmetrics",
		site("PORT1", "tunnel")+site("PORT2", "terminate"), 2)
	addrTunnel, addrTerminate := addrs[0], addrs[1]
	flags := []chromedp.ExecAllocatorOption{chromedp.Flag("ignore-certificate-errors", true)}
	if proto == "h3" {
		// QUIC ignores ignore-certificate-errors: the leaf's key is
		// trusted by its hash instead. localhost is mapped to the address
		// Caddy's UDP socket has (Chromium would try ::1 first).
		leaf, err := x509.ParseCertificate(ca.Server.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		spki := sha256.Sum256(leaf.RawSubjectPublicKeyInfo)
		var origins []string
		for _, a := range addrs {
			origins = append(origins, "localhost:"+a[strings.LastIndex(a, ":")+1:])
		}
		flags = append(flags,
			chromedp.Flag("disable-quic", false),
			chromedp.Flag("enable-quic", true),
			chromedp.Flag("origin-to-force-quic-on", strings.Join(origins, ",")),
			chromedp.Flag("ignore-certificate-errors-spki-list", base64.StdEncoding.EncodeToString(spki[:])),
			chromedp.Flag("host-resolver-rules", "MAP localhost 127.0.0.1"),
			chromedp.Flag("enable-features", "EnableWebsocketsOverHttp3"))
	}
	browser := chromium(t, flags...)

	want := int64(101)
	if proto != "h1" {
		want = 200
	}
	for _, site := range []struct{ mode, addr string }{{"tunnel", addrTunnel}, {"terminate", addrTerminate}} {
		port := site.addr[strings.LastIndex(site.addr, ":")+1:]
		url := "https://localhost:" + port + "/"
		var mu sync.Mutex
		var statuses []int64
		tab, cancel := chromedp.NewContext(browser, chromedp.WithListener(func(ev any) {
			if e, ok := ev.(*network.EventWebSocketHandshakeResponseReceived); ok {
				mu.Lock()
				statuses = append(statuses, e.Response.Status)
				mu.Unlock()
			}
		}))
		t.Cleanup(cancel)
		alice := joinIn(t, tab, url, "alice-"+site.mode)
		bob := member(t, browser, url, "bob-"+site.mode)
		mu.Lock()
		got := append([]int64(nil), statuses...)
		mu.Unlock()
		if len(got) == 0 || got[0] != want {
			t.Fatalf("%s: WebSocket handshake statuses %v, want %d (%s)", site.mode, got, want, proto)
		}
		t.Logf("%s over %s: Chromium's WebSocket handshake answered %d", site.mode, proto, got[0])
		defer func(mode string, alice, bob context.Context) {
			if err := say(alice, "still there? "+mode); err != nil {
				t.Fatalf("%s: %v (status %q)", mode, err, text(t, alice, "#status"))
			}
			if err := chromedp.Do(bob, waitText("#log", "still there? "+mode, 5*time.Second)); err != nil {
				t.Fatalf("%s after %v of silence over %s: %v (status %q)", mode, 3*idle, proto, err, text(t, bob, "#status"))
			}
			t.Logf("%s over %s: the room still works after %v of silence", mode, proto, 3*idle)
			// The page's own close: the Close frames cross, the stream (or
			// connection) ends in order, and the page says so.
			if err := chromedp.Do(alice, chromedp.Click(chromedp.CSS("#leave")),
				waitText("#status", "disconnected (code 1000, clean", 5*time.Second)); err != nil {
				t.Fatalf("%s over %s, the page closed with 1000: %v", mode, proto, err)
			}
			t.Logf("%s over %s: the page's close: %s", mode, proto, text(t, alice, "#status"))
		}(site.mode, alice, bob)
	}
	time.Sleep(3 * idle)
	for _, e := range wstest.LogEntries(t, "websocket connected") {
		if e["proto"] != proto {
			t.Errorf("connection logged with proto %v, want %s", e["proto"], proto)
		}
	}
}

// joinIn joins the chat as name in the tab given.
func joinIn(t *testing.T, tab context.Context, url, name string) context.Context {
	t.Helper()
	err := chromedp.Do(tab,
		chromedp.Navigate(url),
		chromedp.WaitVisible(chromedp.CSS("#name")),
		chromedp.SendKeys(chromedp.CSS("#name"), name),
		chromedp.Click(chromedp.CSS("#join")),
		waitText("#status", "connected as "+name, 5*time.Second),
	)
	if err != nil {
		t.Fatalf("%s joining %s: %v", name, url, err)
	}
	return tab
}
