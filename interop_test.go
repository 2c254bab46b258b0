package websocket_test

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/caddy-websocket/caddy-websocket/internal/wstest"
)

// need returns the path of a program, or skips the test outside CI when it
// is missing (CI installs it, and fails instead).
func need(t *testing.T, prog, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(prog)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is not installed (%s)", prog, pkg)
		}
		t.Skipf("%s is not installed (%s)", prog, pkg)
	}
	return p
}

// TestInteropClients runs third-party clients through both modes against
// the gorilla echo backend.
func TestInteropClients(t *testing.T) {
	py := need(t, "/usr/bin/python3", "python3")
	if exec.Command(py, "-c", "import websockets").Run() != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("python3-websockets is not installed")
		}
		t.Skip("python3-websockets is not installed")
	}
	node := need(t, "node", "nodejs")
	echo := echoBackend(t)
	addrs := wstest.StartCaddyPorts(t, fmt.Sprintf(`http://127.0.0.1:{PORT1} {
		websocket %[1]s
	}
	http://127.0.0.1:{PORT2} {
		websocket %[1]s {
			mode terminate
		}
	}`, hostOf(echo)), 2)
	clients := map[string][]string{
		"python3-websockets": {py, "internal/interop/client.py"},
		"node":               {node, "--experimental-websocket", "internal/interop/client.mjs"},
	}
	for name, argv := range clients {
		for i, mode := range []string{"tunnel", "terminate"} {
			t.Run(name+"/"+mode, func(t *testing.T) {
				cmd := exec.Command(argv[0], append(argv[1:], "ws://"+addrs[i]+"/echo")...)
				out, err := cmd.CombinedOutput()
				if err != nil || !strings.HasPrefix(string(out), "OK") {
					t.Fatalf("%v\n%s", err, out)
				}
				t.Logf("%s", strings.TrimSpace(string(out)))
			})
		}
	}
}
