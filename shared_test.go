package websocket_test

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-websocket/caddy-websocket/internal/wstest"
)

// buildCaddy builds Caddy with this module once per test binary run.
var builtCaddy string

func buildCaddy(t *testing.T) string {
	t.Helper()
	if builtCaddy != "" {
		return builtCaddy
	}
	out := filepath.Join(os.TempDir(), fmt.Sprintf("caddy-websocket-test-%d", os.Getpid()))
	cmd := exec.Command("go", "build", "-o", out, "./cmd/caddy")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/caddy: %v\n%s", err, b)
	}
	builtCaddy = out
	return out
}

// instance runs a built Caddy with cf (a whole Caddyfile) until the test
// ends, and returns its log file.
func instance(t *testing.T, bin, name, cf string) string {
	t.Helper()
	_, log := startInstance(t, bin, name, cf)
	return log
}

// startInstance is instance, with the process.
func startInstance(t *testing.T, bin, name, cf string) (*os.Process, string) {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, name+".Caddyfile")
	os.WriteFile(path, []byte(cf), 0o644)
	logPath := filepath.Join(dir, name+".log")
	logf, _ := os.Create(logPath)
	cmd := exec.Command(bin, "run", "--config", path, "--adapter", "caddyfile")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("%s log:\n%s", name, b)
		}
	})
	return cmd.Process, logPath
}

func waitLog(t *testing.T, path, want string, d time.Duration) string {
	t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		b, _ := os.ReadFile(path)
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, want) {
				return line
			}
		}
	}
	t.Fatalf("%s: no %q within %v", filepath.Base(path), want, d)
	return ""
}

// TestSharedLearning: two Caddy processes share a file-system storage.
// Instance 1 learns a backend's 1 s idle timeout from a drop; instance 2,
// started afterwards, has it from its first connection (the admin API shows
// the keepalive in force: half the learned value, not keepalive_max).
func TestSharedLearning(t *testing.T) {
	bin := buildCaddy(t)
	backend := wstest.NewBackend(t, nil, wstest.Drain(time.Second)) // drops after 1 s of silence
	storage := t.TempDir()
	cf := func(port, admin int) string {
		return fmt.Sprintf(`{
	admin 127.0.0.1:%d
	persist_config off
	auto_https off
	storage file_system %s
}
http://127.0.0.1:%d {
	websocket %s {
		backend {
			keepalive auto
			keepalive_min 100ms
		}
	}
}
`, admin, storage, port, backend.Addr)
	}
	p1, a1 := wstest.FreePort(t), wstest.FreePort(t)
	log1 := instance(t, bin, "instance1", cf(p1, a1))
	addr1 := fmt.Sprintf("127.0.0.1:%d", p1)
	waitListening(t, addr1)
	c, res := wstest.Dial(t, addr1, "")
	if c == nil {
		t.Fatalf("instance 1: %d", res.StatusCode)
	}
	line := waitLog(t, log1, "websocket learned backend idle timeout", 5*time.Second)
	t.Logf("instance 1: %s", line)
	files, _ := filepath.Glob(filepath.Join(storage, "websocket", "learned", "upstream", "*.json"))
	for end := time.Now().Add(3 * time.Second); len(files) == 0 && time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		files, _ = filepath.Glob(filepath.Join(storage, "websocket", "learned", "upstream", "*.json"))
	}
	if len(files) != 1 {
		t.Fatalf("stored values: %v", files)
	}
	stored, _ := os.ReadFile(files[0])
	t.Logf("stored: %s", stored)

	p2, a2 := wstest.FreePort(t), wstest.FreePort(t)
	log2 := instance(t, bin, "instance2", cf(p2, a2))
	addr2 := fmt.Sprintf("127.0.0.1:%d", p2)
	waitListening(t, addr2)
	t.Logf("instance 2: %s", waitLog(t, log2, "websocket took a shared backend idle timeout", 5*time.Second))
	c2, res := wstest.Dial(t, addr2, "")
	if c2 == nil {
		t.Fatalf("instance 2: %d", res.StatusCode)
	}
	var list struct {
		Connections []struct {
			BackendLeg struct {
				Keepalive float64 `json:"keepalive_seconds"`
			} `json:"backend_leg"`
		} `json:"connections"`
	}
	adminJSON(t, "GET", fmt.Sprintf("http://127.0.0.1:%d/websocket/connections", a2), &list)
	if len(list.Connections) != 1 {
		t.Fatalf("instance 2 lists %d connections", len(list.Connections))
	}
	if k := list.Connections[0].BackendLeg.Keepalive; k < 0.4 || k > 0.6 {
		t.Fatalf("instance 2's first connection pings the backend every %vs, want the shared ~0.5s", k)
	}
	t.Logf("instance 2's first connection: backend keepalive %vs", list.Connections[0].BackendLeg.Keepalive)
}

func waitListening(t *testing.T, addr string) {
	t.Helper()
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if c, res := tryDial(addr); c == nil && res {
			return
		}
	}
	t.Fatalf("%s not listening", addr)
}

func tryDial(addr string) (any, bool) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, false
	}
	c.Close()
	return nil, true
}
