// Package wstest holds what the integration tests share: an in-process Caddy
// started from a Caddyfile on an ephemeral loopback port, and raw WebSocket
// peers that read and write exact bytes, so tests can assert that frames pass
// the gateway unchanged.
package wstest

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	mathrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/caddy-websocket/caddy-websocket/internal/frame"
	"github.com/caddy-websocket/caddy-websocket/internal/upgrade"
)

// FreePort returns a loopback port, free for TCP and UDP a moment ago,
// below the kernel's range for outgoing connections (32768–60999 here): a
// port from that range, handed out by the kernel and closed again, can be
// taken by any outgoing connection before the server that was to listen on
// it binds (a test with hundreds of clients makes that likely). Each port
// is handed out once per test binary.
func FreePort(t testing.TB) int {
	t.Helper()
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 1000 {
		port := 10000 + mathrand.IntN(32768-10000)
		if portsGiven[port] {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		l.Close()
		if err != nil {
			continue
		}
		u.Close()
		portsGiven[port] = true
		return port
	}
	t.Fatal("no free port below 32768")
	return 0
}

var (
	portsMu    sync.Mutex
	portsGiven = map[int]bool{}
)

// StartCaddy runs Caddy in this process with the given Caddyfile site
// blocks; "{PORT}" in them is replaced by a free loopback port, whose
// address is returned. Caddy stops when the test ends.
func StartCaddy(t testing.TB, sites string) string {
	return StartCaddyPorts(t, sites, 1)[0]
}

// StartCaddyPorts is StartCaddy with n ports: "{PORT}" or "{PORT1}" is the
// first, "{PORT2}" the second, and so on.
func StartCaddyPorts(t testing.TB, sites string, n int) []string {
	t.Helper()
	return startCaddy(t, sites, n, "off")
}

// StartCaddyAdmin is StartCaddy with Caddy's admin endpoint on a free
// loopback port, whose address it returns second.
func StartCaddyAdmin(t testing.TB, sites string) (addr, admin string) {
	t.Helper()
	admin = fmt.Sprintf("127.0.0.1:%d", FreePort(t))
	return startCaddy(t, sites, 1, admin)[0], admin
}

// StartCaddyGlobal is StartCaddy with more global options (such as
// "metrics") inside Caddy's global block, and with withAdmin the admin
// endpoint on a free loopback port, whose address it returns second.
func StartCaddyGlobal(t testing.TB, global, sites string, withAdmin bool) (addr, admin string) {
	t.Helper()
	admin = "off"
	if withAdmin {
		admin = fmt.Sprintf("127.0.0.1:%d", FreePort(t))
	}
	return startCaddyGlobal(t, global, sites, 1, admin)[0], admin
}

// StartCaddyGlobalPorts is StartCaddyGlobal with n ports, as
// StartCaddyPorts, and no admin endpoint.
func StartCaddyGlobalPorts(t testing.TB, global, sites string, n int) []string {
	t.Helper()
	return startCaddyGlobal(t, global, sites, n, "off")
}

// StartCaddyGlobalPortsAdmin is StartCaddyGlobalPorts with the admin
// endpoint on a free loopback port, whose address it returns second.
func StartCaddyGlobalPortsAdmin(t testing.TB, global, sites string, n int) (addrs []string, admin string) {
	t.Helper()
	admin = fmt.Sprintf("127.0.0.1:%d", FreePort(t))
	return startCaddyGlobal(t, global, sites, n, admin), admin
}

func startCaddy(t testing.TB, sites string, n int, admin string) []string {
	t.Helper()
	return startCaddyGlobal(t, "", sites, n, admin)
}

func startCaddyGlobal(t testing.TB, global, sites string, n int, admin string) []string {
	t.Helper()
	var addrs []string
	for i := 1; i <= n; i++ {
		port := fmt.Sprint(FreePort(t))
		addrs = append(addrs, "127.0.0.1:"+port)
		sites = strings.ReplaceAll(sites, fmt.Sprintf("{PORT%d}", i), port)
		if i == 1 {
			sites = strings.ReplaceAll(sites, "{PORT}", port)
		}
	}
	// Caddy's log goes to a file that is shown only when the test fails.
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	autoHTTPS := "\tauto_https off\n"
	if strings.Contains(global, "auto_https") {
		autoHTTPS = "" // the caller's own setting
	}
	// Each test's own storage: what one test's Caddy learns (and shares
	// through its storage) must not leak into the next.
	if !strings.Contains(global, "storage ") {
		autoHTTPS += "\tstorage file_system " + filepath.Join(t.TempDir(), "storage") + "\n"
	}
	cf := fmt.Sprintf("{\n\tadmin %s\n\tpersist_config off\n"+autoHTTPS+"\tdefault_bind 127.0.0.1\n"+
		"\tlog {\n\t\toutput file %s\n\t\tlevel DEBUG\n\t}\n%s\n}\n", admin, logFile, global) + sites
	LoadCaddyfile(t, cf)
	logFiles.Store(t.Name(), logFile)
	t.Cleanup(func() {
		if err := caddy.Stop(); err != nil {
			t.Logf("caddy stop: %v", err)
		}
	})
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(logFile)
			t.Logf("caddy log:\n%s", b)
		}
	})
	return addrs
}

var logFiles sync.Map // test name → Caddy's log file

// LogEntries returns the entries of the test's Caddy log (StartCaddy) whose
// msg is msg.
func LogEntries(t testing.TB, msg string) []map[string]any {
	t.Helper()
	path, ok := logFiles.Load(t.Name())
	if !ok {
		t.Fatal("no Caddy log for this test")
	}
	b, err := os.ReadFile(path.(string))
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	for _, line := range bytes.Split(b, []byte("\n")) {
		var m map[string]any
		if json.Unmarshal(line, &m) == nil && m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// LoadJSON loads a JSON config; Caddy stops when the test ends.
func LoadJSON(t testing.TB, js []byte) {
	t.Helper()
	if err := caddy.Load(js, true); err != nil {
		t.Fatalf("load: %v", err)
	}
	t.Cleanup(func() { caddy.Stop() })
}

// LoadCaddyfile adapts and loads a whole Caddyfile, as a reload would.
func LoadCaddyfile(t testing.TB, cf string) {
	t.Helper()
	cfg, warn, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), nil)
	if err != nil {
		t.Fatalf("adapt: %v\n%s", err, cf)
	}
	for _, w := range warn {
		if !strings.Contains(w.Message, "not formatted") {
			t.Logf("caddyfile warning: %s", w.String())
		}
	}
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatalf("load: %v", err)
	}
}

// Key returns a fresh Sec-WebSocket-Key.
func Key() string {
	var b [16]byte
	rand.Read(b[:])
	return base64.StdEncoding.EncodeToString(b[:])
}

// UpgradeRequest returns a valid upgrade request for path on host, with
// extra header lines ("Name: value") appended.
func UpgradeRequest(host, path, key string, extra ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n", path, host, key)
	for _, e := range extra {
		b.WriteString(e + "\r\n")
	}
	b.WriteString("\r\n")
	return b.String()
}

// Peer is one end of a raw WebSocket connection.
type Peer struct {
	net.Conn
	R *bufio.Reader
	// Masked says whether this end masks its frames (it is a client).
	Masked bool
}

// Dial opens a raw client connection to addr and sends the upgrade request
// (built by UpgradeRequest unless req is given). It returns the peer and
// the response; the peer is nil unless the status is 101.
func Dial(t testing.TB, addr, req string) (*Peer, *http.Response) {
	t.Helper()
	return DialFrom(t, "", addr, req)
}

// DialFrom is Dial from a given loopback source address ("127.0.0.2"), so
// that tests can be several clients.
func DialFrom(t testing.TB, from, addr, req string) (*Peer, *http.Response) {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if req == "" {
		req = UpgradeRequest(addr, "/ws", Key())
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading the response: %v", err)
	}
	c.SetDeadline(time.Time{})
	if res.StatusCode != http.StatusSwitchingProtocols {
		t.Cleanup(func() { c.Close() })
		return nil, res
	}
	p := &Peer{Conn: c, R: br, Masked: true}
	t.Cleanup(func() { p.Close() })
	return p, res
}

// Frame is a decoded frame with its payload unmasked.
type Frame struct {
	frame.Header
	Payload []byte
}

// ReadFrame reads one frame, waiting at most d.
func (p *Peer) ReadFrame(d time.Duration) (Frame, error) {
	p.SetReadDeadline(time.Now().Add(d))
	defer p.SetReadDeadline(time.Time{})
	var hb [frame.MaxHeaderSize]byte
	if _, err := io.ReadFull(p.R, hb[:2]); err != nil {
		return Frame{}, err
	}
	n := frame.HeaderSize(hb[0], hb[1])
	if _, err := io.ReadFull(p.R, hb[2:n]); err != nil {
		return Frame{}, err
	}
	h, _, err := frame.ParseHeader(hb[:n])
	if err != nil {
		return Frame{}, err
	}
	f := Frame{Header: h, Payload: make([]byte, h.Length)}
	if _, err := io.ReadFull(p.R, f.Payload); err != nil {
		return Frame{}, err
	}
	if h.Masked {
		frame.Mask(h.Mask, 0, f.Payload)
	}
	return f, nil
}

// ReadBytes reads exactly n raw bytes, waiting at most d.
func (p *Peer) ReadBytes(n int, d time.Duration) ([]byte, error) {
	p.SetReadDeadline(time.Now().Add(d))
	defer p.SetReadDeadline(time.Time{})
	b := make([]byte, n)
	_, err := io.ReadFull(p.R, b)
	return b, err
}

// Encode returns the wire bytes of one frame from this peer.
func (p *Peer) Encode(fin bool, rsv byte, op frame.Opcode, payload []byte) []byte {
	return EncodeFrame(p.Masked, fin, rsv, op, payload)
}

// WriteFrame writes one frame.
func (p *Peer) WriteFrame(op frame.Opcode, payload []byte) error {
	_, err := p.Write(p.Encode(true, 0, op, payload))
	return err
}

// EncodeFrame returns the wire bytes of a frame, masked with a random key
// when masked is set.
func EncodeFrame(masked, fin bool, rsv byte, op frame.Opcode, payload []byte) []byte {
	h := frame.Header{Fin: fin, Rsv: rsv, Op: op, Masked: masked, Length: int64(len(payload))}
	if masked {
		rand.Read(h.Mask[:])
	}
	b := make([]byte, h.Size(), h.Size()+len(payload))
	frame.PutHeader(b, h)
	b = append(b, payload...)
	if masked {
		frame.Mask(h.Mask, 0, b[h.Size():])
	}
	return b
}

// ClosePayload returns the payload of a Close frame.
func ClosePayload(code int, reason string) []byte {
	return append([]byte{byte(code >> 8), byte(code)}, reason...)
}

// Backend is a raw WebSocket backend on a loopback port. Each accepted and
// upgraded connection is handed to Handle in its own goroutine.
type Backend struct {
	Addr string
	// Accepted counts TCP connections accepted, upgraded or not.
	Accepted atomic.Int64
	// Requests receives each upgrade request as it arrived.
	Requests chan *http.Request

	l    net.Listener
	wg   sync.WaitGroup
	resp func(r *http.Request) string
}

// NewBackend starts a backend. respond returns the raw response to an
// upgrade request (nil: a correct 101); handle runs on each upgraded
// connection.
func NewBackend(t testing.TB, respond func(r *http.Request) string, handle func(p *Peer)) *Backend {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &Backend{Addr: l.Addr().String(), Requests: make(chan *http.Request, 100), l: l, resp: respond}
	if b.resp == nil {
		b.resp = func(r *http.Request) string { return Switch(r) }
	}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			b.Accepted.Add(1)
			b.wg.Add(1)
			go func() {
				defer b.wg.Done()
				defer c.Close()
				br := bufio.NewReader(c)
				r, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				select {
				case b.Requests <- r:
				default:
				}
				resp := b.resp(r)
				if _, err := io.WriteString(c, resp); err != nil || !strings.HasPrefix(resp, "HTTP/1.1 101") {
					return
				}
				if handle != nil {
					handle(&Peer{Conn: c, R: br})
				}
			}()
		}
	}()
	t.Cleanup(func() { l.Close() })
	return b
}

// Drain is a backend handler that reads and drops frames until the
// connection ends or nothing comes for idle.
func Drain(idle time.Duration) func(p *Peer) {
	return func(p *Peer) {
		for {
			if _, err := p.ReadFrame(idle); err != nil {
				return
			}
		}
	}
}

// Switch is the correct 101 answer to r.
func Switch(r *http.Request, extra ...string) string {
	var b bytes.Buffer
	fmt.Fprintf(&b, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n",
		upgrade.AcceptKey(r.Header.Get("Sec-WebSocket-Key")))
	for _, e := range extra {
		b.WriteString(e + "\r\n")
	}
	b.WriteString("\r\n")
	return b.String()
}

// NoLeaks checks, when the test ends (after Caddy and the test's servers
// are stopped), that no goroutine of the gateway's relays is left and that
// the process holds no more sockets than when it was called. (Files are not
// counted: Caddy keeps its log file open after it stops.)
// Call it first in a test, so its check runs last.
func NoLeaks(t testing.TB) {
	t.Helper()
	fds := openFDs()
	t.Cleanup(func() {
		var stuck string
		for end := time.Now().Add(8 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
			stuck = relayGoroutines()
			if stuck == "" && openFDs() <= fds {
				return
			}
		}
		if stuck != "" {
			t.Errorf("relay goroutines left behind:\n%s", stuck)
		}
		if n := openFDs(); n > fds {
			t.Errorf("%d sockets open, %d at the start:\n%s", n, fds, fdList())
		}
	})
}

func fdList() string {
	entries, _ := os.ReadDir("/proc/self/fd")
	var out []string
	for _, e := range entries {
		target, _ := os.Readlink("/proc/self/fd/" + e.Name())
		out = append(out, e.Name()+" → "+target)
	}
	return strings.Join(out, "\n")
}

// openFDs counts the process's open sockets.
func openFDs() int {
	entries, _ := os.ReadDir("/proc/self/fd")
	n := 0
	for _, e := range entries {
		if target, _ := os.Readlink("/proc/self/fd/" + e.Name()); strings.HasPrefix(target, "socket:") {
			n++
		}
	}
	return n
}

// relayGoroutines returns the stacks of goroutines running tunnel or
// terminate code.
// RelayGoroutines counts the goroutines running the gateway's relays right
// now; a quiet connection should hold none.
func RelayGoroutines() int {
	if s := relayGoroutines(); s != "" {
		return strings.Count(s, "\n\n") + 1
	}
	return 0
}

// RelayStacks returns the stacks of the goroutines RelayGoroutines counts.
func RelayStacks() string { return relayGoroutines() }

func relayGoroutines() string {
	buf := make([]byte, 1<<22)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "caddy-websocket/internal/relay.") || strings.Contains(g, "caddy-websocket/internal/stream.") || strings.Contains(g, "caddy-websocket/internal/tunnel.") || strings.Contains(g, "caddy-websocket/internal/terminate.") {
			out = append(out, g)
		}
	}
	return strings.Join(out, "\n\n")
}
