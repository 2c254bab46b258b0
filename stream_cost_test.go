//lint:file-ignore SA1019 x/net/http2.Transport is the only Go client that sends extended CONNECT (RFC 8441)

package websocket_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"golang.org/x/net/http2"

	"github.com/caddy-websocket/caddy-websocket/internal/wstest"
)

// TestIdleStreamCost measures (it asserts nothing about the figures) what
// an idle WebSocket costs a built Caddy process: 2000 over HTTP/3 streams
// (40 QUIC connections of 50), 2000 over HTTP/2 streams, then 2000 over
// HTTP/1.1 wss, tunnel mode, a
// site with an access log and metrics. It reads the process's RSS and Go's
// go_goroutines from the admin endpoint, after a collection it asks for
// there. A measurement, not a test: it
// runs only with MEASURE=1.
//
//	MEASURE=1 go test -run TestIdleStreamCost -v .
func TestIdleStreamCost(t *testing.T) {
	if os.Getenv("MEASURE") == "" {
		t.Skip("a measurement: MEASURE=1 to run it")
	}
	// Go's HTTP/2 server takes extended CONNECT only with this setting,
	// read once per process: the measurement runs in a child whose Caddy
	// inherits it.
	if inChild(t, "GODEBUG=http2xconnect=1") {
		return
	}
	bin := buildCaddy(t)
	backend := wstest.NewBackend(t, nil, wstest.Drain(time.Hour))
	ca := wstest.NewCA(t)
	port, admin := wstest.FreePort(t), wstest.FreePort(t)
	proc, log := startInstance(t, bin, "caddy", fmt.Sprintf(`{
	admin 127.0.0.1:%d
	persist_config off
	skip_install_trust
	auto_https disable_redirects
	storage file_system %s
	metrics
}
https://localhost:%d {
	bind 127.0.0.1
	tls %s %s
	log {
		output discard
	}
	websocket %s {
		client {
			keepalive 1h
		}
		backend {
			keepalive 1h
		}
	}
}
`, admin, t.TempDir(), port, ca.CertFile, ca.KeyFile, backend.Addr))
	waitLog(t, log, "serving initial configuration", 30*time.Second)
	addr := fmt.Sprintf("127.0.0.1:%d", port)

	measure := func() (rssKiB, goroutines int, heapKiB, stackKiB float64) {
		time.Sleep(500 * time.Millisecond)
		// A heap profile with gc=1 has the process collect first: the
		// figures are then live memory, not garbage of the handshakes.
		if res, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/heap?gc=1", admin)); err == nil {
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
		}
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", proc.Pid))
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
				rssKiB, _ = strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			}
		}
		res, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", admin))
		if err != nil {
			t.Fatal(err)
		}
		m, _ := io.ReadAll(res.Body)
		res.Body.Close()
		for _, l := range strings.Split(string(m), "\n") {
			if v, ok := strings.CutPrefix(l, "go_goroutines "); ok {
				goroutines, _ = strconv.Atoi(v)
			}
			if v, ok := strings.CutPrefix(l, "go_memstats_heap_inuse_bytes "); ok {
				f, _ := strconv.ParseFloat(v, 64)
				heapKiB = f / 1024
			}
			if v, ok := strings.CutPrefix(l, "go_memstats_stack_inuse_bytes "); ok {
				f, _ := strconv.ParseFloat(v, 64)
				stackKiB = f / 1024
			}
		}
		return
	}

	const conns, perConn = 40, 50
	const n = conns * perConn
	tlsConf := &tls.Config{InsecureSkipVerify: true, ServerName: "localhost", NextProtos: []string{http3.NextProtoH3}}
	ctx := context.Background()
	var clients []*http3.ClientConn
	for range conns {
		qc, err := quic.DialAddr(ctx, addr, tlsConf, &quic.Config{MaxIdleTimeout: time.Hour, KeepAlivePeriod: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { qc.CloseWithError(0, "") })
		cc := (&http3.Transport{}).NewClientConn(qc)
		<-cc.ReceivedSettings()
		clients = append(clients, cc)
	}
	time.Sleep(time.Second)
	rss0, g0, h0, s0 := measure()
	for _, cc := range clients {
		for range perConn {
			str, err := cc.OpenRequestStream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			u := &url.URL{Scheme: "https", Host: "localhost", Path: "/"}
			req := &http.Request{Method: http.MethodConnect, Proto: "websocket", ProtoMajor: 3, URL: u, Host: "localhost",
				Header: http.Header{"Sec-Websocket-Version": {"13"}}}
			if err := str.SendRequestHeader(req); err != nil {
				t.Fatal(err)
			}
			res, err := str.ReadResponse()
			if err != nil || res.StatusCode != 200 {
				t.Fatalf("stream: %v %v", res, err)
			}
			t.Cleanup(func() { str.CancelRead(0); str.Close() })
		}
	}
	time.Sleep(2 * time.Second)
	rss1, g1, h1, s1 := measure()
	t.Logf("HTTP/3: %d idle WebSocket streams on %d QUIC connections: %.1f KiB RSS, %.1f KiB heap+stack (heap %.1f, stacks %.1f), %.2f goroutines per stream",
		n, conns, float64(rss1-rss0)/n, (h1-h0+s1-s0)/n, (h1-h0)/n, (s1-s0)/n, float64(g1-g0)/n)
	if dir := os.Getenv("MEASURE_PROFILE"); dir != "" {
		// The live heap of the streams, for go tool pprof.
		if res, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/heap", admin)); err == nil {
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			os.WriteFile(dir+"/h3-streams.pprof", b, 0o644)
		}
		if res, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/goroutine?debug=1", admin)); err == nil {
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			os.WriteFile(dir+"/h3-goroutines.txt", b, 0o644)
		}
	}

	// The same number over HTTP/2 streams (x/net's Transport opens
	// connections as the server's stream limit asks).
	rss4, g4, h4, s4 := measure()
	tr := &http2.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, ServerName: "localhost"}}
	t.Cleanup(tr.CloseIdleConnections)
	for range n {
		pr, pw := io.Pipe()
		req, err := http.NewRequest(http.MethodConnect, "https://"+addr+"/", pr)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = "localhost"
		req.Header.Set(":protocol", "websocket")
		req.Header.Set("Sec-WebSocket-Version", "13")
		res, err := tr.RoundTrip(req)
		if err != nil || res.StatusCode != 200 {
			t.Fatalf("h2 stream: %v %v", res, err)
		}
		t.Cleanup(func() { pw.Close(); res.Body.Close() })
	}
	time.Sleep(2 * time.Second)
	rss5, g5, h5, s5 := measure()
	t.Logf("HTTP/2: %d idle WebSocket streams: %.1f KiB RSS, %.1f KiB heap+stack (heap %.1f, stacks %.1f), %.2f goroutines per stream",
		n, float64(rss5-rss4)/n, (h5-h4+s5-s4)/n, (h5-h4)/n, (s5-s4)/n, float64(g5-g4)/n)

	// The same number over HTTP/1.1 wss, for comparison.
	rss2, g2, h2, s2 := measure()
	tlsH1 := &tls.Config{InsecureSkipVerify: true, ServerName: "localhost", NextProtos: []string{"http/1.1"}}
	for range n {
		c, err := tls.Dial("tcp", addr, tlsH1)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		io.WriteString(c, wstest.UpgradeRequest("localhost", "/", wstest.Key()))
		res, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || res.StatusCode != 101 {
			t.Fatalf("wss: %v %v", res, err)
		}
	}
	time.Sleep(2 * time.Second)
	rss3, g3, h3, s3 := measure()
	t.Logf("HTTP/1.1 wss: %d idle WebSockets: %.1f KiB RSS, %.1f KiB heap+stack (heap %.1f, stacks %.1f), %.2f goroutines per connection",
		n, float64(rss3-rss2)/n, (h3-h2+s3-s2)/n, (h3-h2)/n, (s3-s2)/n, float64(g3-g2)/n)
}
