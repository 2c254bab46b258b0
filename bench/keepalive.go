package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"
)

// The keepalive's cost, taken apart from the idle case: N parked
// connections pinged every second (so that a short window holds many
// pings), the clients answering each Ping with a Pong, and the target's
// CPU per ping round. Beside the module's two modes runs the floor: a
// minimal Go server doing only that (a goroutine per connection sleeping
// between pings, then a write and a blocking read), the cheapest ping
// round Go's runtime and this kernel allow, whatever the design.

var pingerAddr = flag.String("pinger", "", "internal: run the keepalive floor's server on this address")

// keepaliveInterval is the ping interval of this measurement.
const keepaliveInterval = time.Second

// runPinger is the floor's server (the bench re-executed with -pinger).
func runPinger(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		log.Fatal(err)
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			// Spread over the interval, as the gateway spreads its pings.
			time.Sleep(rand.N(keepaliveInterval))
			ping := []byte{0x89, 0x04, 0, 0, 0, 0}
			var pong [16]byte
			for {
				time.Sleep(keepaliveInterval)
				if _, err := c.Write(ping); err != nil {
					return
				}
				if _, err := io.ReadFull(c, pong[:10]); err != nil { // masked Pong, 4 bytes
					return
				}
			}
		}()
	}
}

// pingClient holds a connection and answers the pings on it.
func pingClient(c net.Conn, br *bufio.Reader, pings *atomic.Int64) {
	var hdr [2]byte
	payload := make([]byte, 125)
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return
		}
		n := int(hdr[1] & 0x7f)
		if n > 125 {
			return // the targets send nothing else here
		}
		if _, err := io.ReadFull(br, payload[:n]); err != nil {
			return
		}
		if hdr[0]&0x0f == 0x9 {
			pings.Add(1)
			out := append([]byte{0x8a, 0x80 | byte(n), 0, 0, 0, 0}, payload[:n]...) // zero mask
			if _, err := c.Write(out); err != nil {
				return
			}
		}
	}
}

// keepaliveCost measures one target holding n connections for window and
// returns the CPU per ping round and the ping count.
func keepaliveCost(p *proc, n int, upgrade bool, window time.Duration) (float64, int64, error) {
	var pings atomic.Int64
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < n; i++ {
		c, err := net.Dial("tcp", p.addr)
		if err != nil {
			return 0, 0, err
		}
		conns = append(conns, c)
		br := bufio.NewReaderSize(c, 256)
		if upgrade {
			fmt.Fprintf(c, "GET /echo HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", p.addr)
			line, err := br.ReadString('\n')
			if err != nil || !strings.Contains(line, " 101 ") {
				return 0, 0, fmt.Errorf("upgrade: %q %v", line, err)
			}
			for {
				l, err := br.ReadString('\n')
				if err != nil {
					return 0, 0, err
				}
				if l == "\r\n" {
					break
				}
			}
		}
		go pingClient(c, br, &pings)
	}
	time.Sleep(3 * keepaliveInterval) // every connection is parked, pings under way
	cpu0, p0 := p.cpu(), pings.Load()
	time.Sleep(window)
	cpu, got := p.cpu()-cpu0, pings.Load()-p0
	if got == 0 {
		return 0, 0, fmt.Errorf("no pings in %v", window)
	}
	return float64(cpu.Microseconds()) / float64(got), got, nil
}

// runKeepaliveCost measures the floor and the module's modes and returns
// the report.
func runKeepaliveCost(bin, work, echo string, n int) string {
	const window = 10 * time.Second
	handler := "websocket ECHO {\n\t\tclient {\n\t\t\tkeepalive 1s\n\t\t}\n\t\tbackend {\n\t\t\tkeepalive off\n\t\t}%s\n\t}"
	type row struct {
		name    string
		start   func() (*proc, error)
		upgrade bool
	}
	rows := []row{
		{"floor: Go, a goroutine per connection", func() (*proc, error) {
			addr := fmt.Sprintf("127.0.0.1:%d", freePort())
			self, err := os.Executable()
			if err != nil {
				return nil, err
			}
			return start(addr, "", self, "-pinger", addr)
		}, false},
		{"tunnel", func() (*proc, error) {
			return caddyTarget(bin, work, "tunnel-ka", fmt.Sprintf(handler, ""), "ws").start(echo)
		}, true},
		{"terminate", func() (*proc, error) {
			return caddyTarget(bin, work, "terminate-ka", fmt.Sprintf(handler, "\n\t\tmode terminate"), "ws").start(echo)
		}, true},
	}
	if before != "" {
		rows = append(rows, row{"tunnel@before", func() (*proc, error) {
			return caddyTarget(filepath.Dir(before), work, "tunnel-ka-before", fmt.Sprintf(handler, ""), "ws").start(echo)
		}, true})
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# Keepalive: CPU per ping round\n\n%d idle connections, each pinged every %v by the target (client leg only; the clients answer each Ping with a Pong), CPU of the target's process over %v; %s.\n\n",
		n, keepaliveInterval, window, time.Now().UTC().Format(time.RFC3339))
	fmt.Fprintf(&b, "| target | pings | CPU µs per ping round | 10,000 connections, both legs every 20 s (1,000 pings/s): %% of a core |\n|---|---|---|---|\n")
	for _, r := range rows {
		log.Printf("keepalive cost: %s", r.name)
		p, err := r.start()
		if err != nil {
			log.Printf("  %s: %v", r.name, err)
			continue
		}
		us, got, err := keepaliveCost(p, n, r.upgrade, window)
		p.stop()
		if err != nil {
			log.Printf("  %s: %v", r.name, err)
			continue
		}
		fmt.Fprintf(&b, "| %s | %d | %.1f | %.2f |\n", r.name, got, us, us*1000/1e6*100)
	}
	return b.String()
}
