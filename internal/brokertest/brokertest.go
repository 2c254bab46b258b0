// Package brokertest runs the brokers a fleet's message bus uses
// (Debian's redis-server and nats-server) on loopback for the tests, and
// stops and restarts them on the same port to make the outages the bus
// must ride out.
package brokertest

import (
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/caddy-websocket/caddy-websocket/internal/wstest"
)

// Server is a broker process the test started.
type Server struct {
	// URL is how the bus reaches it: redis://127.0.0.1:port or
	// nats://127.0.0.1:port.
	URL  string
	t    testing.TB
	args []string
	port int
	cmd  *exec.Cmd
}

// Redis starts redis-server on a free loopback port, without persistence;
// it is stopped when the test ends.
func Redis(t testing.TB) *Server {
	port := freePort(t)
	return start(t, port, "redis://127.0.0.1:"+strconv.Itoa(port), "redis-server",
		"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", t.TempDir())
}

// NATS starts nats-server on a free loopback port; it is stopped when the
// test ends.
func NATS(t testing.TB) *Server {
	port := freePort(t)
	return start(t, port, "nats://127.0.0.1:"+strconv.Itoa(port), "nats-server", "-a", "127.0.0.1", "-p", strconv.Itoa(port))
}

func start(t testing.TB, port int, url string, args ...string) *Server {
	t.Helper()
	if _, err := exec.LookPath(args[0]); err != nil {
		t.Fatalf("%s is not installed (scripts/test.sh installs it: apt-get install %s)", args[0], args[0])
	}
	s := &Server{URL: url, t: t, args: args, port: port}
	s.Start()
	t.Cleanup(s.Stop)
	return s
}

// Start starts the server (again) on its port and waits until it accepts
// connections.
func (s *Server) Start() {
	s.t.Helper()
	s.cmd = exec.Command(s.args[0], s.args[1:]...)
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("%s: %v", s.args[0], err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(s.port)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("%s does not accept connections on %s: %v", s.args[0], addr, err)
		}
	}
}

// Stop kills the server (as a crash would: no goodbye to its clients) and
// waits for it to exit.
func (s *Server) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	s.cmd.Process.Kill()
	s.cmd.Wait()
	s.cmd = nil
}

// freePort returns a loopback port below the kernel's range for outgoing
// connections, so that none takes it while the broker is stopped.
func freePort(t testing.TB) int { return wstest.FreePort(t) }

// String names the server for test logs.
func (s *Server) String() string { return fmt.Sprintf("%s on %d", s.args[0], s.port) }
