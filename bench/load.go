package main

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"log"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// result holds one target's figures from one repetition, by metric name.
type result map[string]float64

var dialer = websocket.Dialer{HandshakeTimeout: 10 * time.Second, ReadBufferSize: 4096, WriteBufferSize: 4096}

// tlsDialer dials the wss targets: the bench's own certificate (not
// verified: the load generator is not what is measured), TLS 1.3 with
// X25519, the group every target here (OpenSSL 3.0 in nginx and HAProxy,
// Go in Caddy) speaks, so the key exchange costs the same everywhere.
var tlsDialer = websocket.Dialer{HandshakeTimeout: 10 * time.Second, ReadBufferSize: 4096, WriteBufferSize: 4096,
	TLSClientConfig: &tls.Config{InsecureSkipVerify: true, ServerName: "localhost", MinVersion: tls.VersionTLS13,
		CurvePreferences: []tls.CurveID{tls.X25519}}}

func dial(p *proc) (*websocket.Conn, error) {
	if p.streams != nil {
		d := dialer
		d.NetDialContext = p.streams.conn
		c, _, err := d.Dial("ws://"+p.addr+"/echo", nil)
		return c, err
	}
	if p.tls {
		c, _, err := tlsDialer.Dial("wss://"+p.addr+"/echo", nil)
		return c, err
	}
	c, _, err := dialer.Dial("ws://"+p.addr+"/echo", nil)
	return c, err
}

// runTarget starts a target, runs every case against it and stops it.
func runTarget(spec targetSpec, echo string, s settings) (result, error) {
	p, err := spec.start(echo)
	if err != nil {
		return nil, err
	}
	defer p.stop()
	res := result{"load": loadAvg()}
	if s.runs("idle") {
		if err := idle(p, s, res); err != nil {
			return nil, fmt.Errorf("idle: %w", err)
		}
	}
	if s.runs("handshake") {
		if err := handshakeCases(p, s, res); err != nil {
			return nil, err
		}
	}
	if s.runs("echo") {
		if err := echoCases(p, s, res); err != nil {
			return nil, err
		}
	}
	if s.runs("pipelined") {
		if err := pipelinedCases(p, s, res); err != nil {
			return nil, err
		}
	}
	return res, nil
}

func handshakeCases(p *proc, s settings, res result) error {
	for _, c := range []int{1, 50} {
		if err := handshakes(p, c, s.dur, res); err != nil {
			return fmt.Errorf("handshakes c=%d: %w", c, err)
		}
	}
	return nil
}

func echoCases(p *proc, s settings, res result) error {
	for _, c := range []int{1, 50} {
		for _, size := range []int{64, 16 << 10} {
			if err := echoCase(p, c, size, s.dur, res); err != nil {
				return fmt.Errorf("echo c=%d %dB: %w", c, size, err)
			}
		}
	}
	return nil
}

func pipelinedCases(p *proc, s settings, res result) error {
	for _, size := range []int{64, 16 << 10} {
		if err := pipelined(p, 8, 16, size, s.dur, res); err != nil {
			return fmt.Errorf("pipelined %dB: %w", size, err)
		}
	}
	return nil
}

// idle opens N connections, lets them sit, and measures the target's RSS
// and goroutines per connection, then closes them all and measures again.
func idle(p *proc, s settings, res result) error {
	settle := func() { time.Sleep(1500 * time.Millisecond) }
	settle()
	rss0, g0 := p.rssKiB(), p.goroutines()
	conns := make([]*websocket.Conn, s.idleConns)
	var wg sync.WaitGroup
	var failed atomic.Int64
	sem := make(chan struct{}, 50)
	for i := range conns {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := dial(p)
			if err != nil {
				if failed.Add(1) == 1 {
					log.Printf("  idle: %v", err)
				}
				return
			}
			conns[i] = c
		}()
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		return fmt.Errorf("%d of %d connections failed", n, s.idleConns)
	}
	// One round trip on each, so every leg is fully set up.
	for _, c := range conns {
		c.WriteMessage(websocket.BinaryMessage, []byte("x"))
	}
	for _, c := range conns {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, m, err := c.ReadMessage(); err != nil || string(m) != "x" {
			return fmt.Errorf("idle echo: %q %v", m, err)
		}
	}
	settle()
	rss1, g1 := p.rssKiB(), p.goroutines()
	n := float64(s.idleConns)
	res["idle_rss_kib_per_conn"] = float64(rss1-rss0) / n
	// A Go process returns the garbage of the handshakes to the OS over the
	// next seconds; what it keeps is its idle cost. Every target is given
	// the same chance to settle.
	res["idle_rss_kib_per_conn_settled"] = float64(settledRSS(p)-rss0) / n
	if g0 >= 0 && g1 >= 0 {
		res["idle_goroutines_per_conn"] = float64(g1-g0) / n
	}
	cpu0 := p.cpu()
	time.Sleep(2 * time.Second)
	res["idle_cpu_pct"] = float64(p.cpu()-cpu0) / float64(2*time.Second) * 100
	if p.pings && s.keepaliveWindow > 0 {
		if err := keepalive(p, conns, s.keepaliveWindow, res); err != nil {
			return err
		}
	}
	for _, c := range conns {
		c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""), time.Now().Add(time.Second))
		c.Close()
	}
	time.Sleep(3 * time.Second)
	rss2 := p.rssKiB()
	res["idle_rss_after_close_pct_of_start"] = float64(rss2) / float64(rss0) * 100
	return nil
}

// keepalive keeps the idle connections open, answering pings, through a
// whole keepalive cycle of a target that pings (20 s by default, sent
// 18–20 s after the last traffic), and measures the target's CPU over the
// window and the pings the clients got.
func keepalive(p *proc, conns []*websocket.Conn, window time.Duration, res result) error {
	var pings atomic.Int64
	var wg sync.WaitGroup
	for _, c := range conns {
		c.SetPingHandler(func(data string) error {
			pings.Add(1)
			return c.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(5*time.Second))
		})
		c.SetReadDeadline(time.Now().Add(window))
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.ReadMessage() // until the deadline: pings are answered meanwhile
		}()
	}
	cpu0 := p.cpu()
	wg.Wait()
	res["keepalive_cpu_pct"] = float64(p.cpu()-cpu0) / float64(window) * 100
	res["keepalive_pings_per_conn"] = float64(pings.Load()) / float64(len(conns))
	if pings.Load() < int64(len(conns)) {
		return fmt.Errorf("keepalive: %d pings for %d connections in %v", pings.Load(), len(conns), window)
	}
	return nil
}

// settledRSS waits until the target's RSS moves by less than 0.5% over a
// second, for at most 20 seconds, and returns it.
func settledRSS(p *proc) int64 {
	prev := p.rssKiB()
	for range 20 {
		time.Sleep(time.Second)
		cur := p.rssKiB()
		if d := cur - prev; d*200 <= cur && -d*200 <= cur {
			return cur
		}
		prev = cur
	}
	return prev
}

// handshakes opens and closes connections with c workers for d.
func handshakes(p *proc, c int, d time.Duration, res result) error {
	var count, failed atomic.Int64
	cpu0 := p.cpu()
	start := time.Now()
	var wg sync.WaitGroup
	for range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Since(start) < d {
				conn, err := dial(p)
				if err != nil {
					failed.Add(1)
					continue
				}
				conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""), time.Now().Add(time.Second))
				conn.Close()
				count.Add(1)
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	cpu := p.cpu() - cpu0
	n := count.Load()
	if n == 0 || failed.Load() > n/10 {
		return fmt.Errorf("%d handshakes, %d failed", n, failed.Load())
	}
	key := "handshake_c" + strconv.Itoa(c)
	res[key+"_per_s"] = float64(n) / el.Seconds()
	res[key+"_cpu_us"] = float64(cpu.Microseconds()) / float64(n)
	return nil
}

// payload returns a message whose first bytes carry a sequence number, so
// every echo is checked.
func payload(size int, seq uint64) []byte {
	b := bytes.Repeat([]byte{byte(seq)}, max(size, 8))
	binary.BigEndian.PutUint64(b, seq)
	return b[:size]
}

// echoCase: c connections, each sending one message and waiting for its
// echo, for d.
func echoCase(p *proc, c, size int, d time.Duration, res result) error {
	conns := make([]*websocket.Conn, c)
	for i := range conns {
		conn, err := dial(p)
		if err != nil {
			return err
		}
		defer conn.Close()
		conns[i] = conn
	}
	lat := make([][]time.Duration, c)
	errs := make(chan error, c)
	cpu0 := p.cpu()
	start := time.Now()
	var wg sync.WaitGroup
	for i, conn := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := uint64(0); time.Since(start) < d; seq++ {
				msg := payload(size, seq)
				t0 := time.Now()
				if err := conn.WriteMessage(websocket.BinaryMessage, msg); err != nil {
					errs <- err
					return
				}
				conn.SetReadDeadline(time.Now().Add(10 * time.Second))
				_, got, err := conn.ReadMessage()
				if err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(got, msg) {
					errs <- fmt.Errorf("echo %d differs", seq)
					return
				}
				lat[i] = append(lat[i], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	cpu := p.cpu() - cpu0
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	slices.Sort(all)
	key := fmt.Sprintf("echo_c%d_%s", c, sizeName(size))
	n := float64(len(all))
	res[key+"_p50_us"] = float64(all[len(all)/2].Microseconds())
	res[key+"_p99_us"] = float64(all[len(all)*99/100].Microseconds())
	res[key+"_msgs_per_s"] = n / time.Since(start).Seconds()
	// Each round trip is two messages through the target.
	res[key+"_cpu_us_per_msg"] = float64(cpu.Microseconds()) / (2 * n)
	return nil
}

// pipelined: c connections each keeping inflight messages in flight.
func pipelined(p *proc, c, inflight, size int, d time.Duration, res result) error {
	var msgs atomic.Int64
	errs := make(chan error, 2*c)
	cpu0 := p.cpu()
	start := time.Now()
	var wg sync.WaitGroup
	for range c {
		conn, err := dial(p)
		if err != nil {
			return err
		}
		defer conn.Close()
		credit := make(chan struct{}, inflight)
		for range inflight {
			credit <- struct{}{}
		}
		sent := make(chan uint64, inflight+1)
		wg.Add(2)
		go func() { // writer
			defer wg.Done()
			defer close(sent)
			for seq := uint64(0); time.Since(start) < d; seq++ {
				<-credit
				if err := conn.WriteMessage(websocket.BinaryMessage, payload(size, seq)); err != nil {
					errs <- err
					return
				}
				sent <- seq
			}
		}()
		go func() { // reader
			defer wg.Done()
			for seq := range sent {
				conn.SetReadDeadline(time.Now().Add(10 * time.Second))
				_, got, err := conn.ReadMessage()
				if err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(got, payload(size, seq)) {
					errs <- fmt.Errorf("pipelined echo %d differs or out of order", seq)
					return
				}
				msgs.Add(1)
				credit <- struct{}{}
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	cpu := p.cpu() - cpu0
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	n := float64(msgs.Load())
	key := "pipelined_c8_" + sizeName(size)
	res[key+"_msgs_per_s"] = n / el.Seconds()
	res[key+"_mb_per_s"] = n * float64(size) / el.Seconds() / 1e6
	res[key+"_cpu_us_per_msg"] = float64(cpu.Microseconds()) / (2 * n)
	return nil
}

func sizeName(size int) string {
	if size >= 1024 {
		return strconv.Itoa(size/1024) + "KiB"
	}
	return strconv.Itoa(size) + "B"
}

func loadAvg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return -1
	}
	v, err := strconv.ParseFloat(strings.Fields(string(b))[0], 64)
	if err != nil {
		log.Print(err)
	}
	return v
}
