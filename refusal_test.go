package websocket_test

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/caddy-websocket/caddy-websocket/internal/wstest"
)

// TestHandleErrors: a refused upgrade reaches the site's handle_errors
// routes as an error with the status and the one-line reason as its
// message; without them the client gets the reason as the body.
func TestHandleErrors(t *testing.T) {
	addrs := wstest.StartCaddyPorts(t, `http://127.0.0.1:{PORT1} {
		websocket 127.0.0.1:1
		handle_errors {
			respond "error page: {err.status_code} {err.message}" {err.status_code}
		}
	}
	http://127.0.0.1:{PORT2} {
		websocket 127.0.0.1:1
	}`, 2)
	for i, want := range []string{
		"error page: 426 unsupported Sec-WebSocket-Version \"8\": this server speaks 13",
		"unsupported Sec-WebSocket-Version \"8\": this server speaks 13\n",
	} {
		req := wstest.UpgradeRequest(addrs[i], "/ws", wstest.Key(), "Sec-WebSocket-Version: 8")
		req = strings.Replace(req, "Sec-WebSocket-Version: 13\r\n", "", 1)
		p, res := wstest.Dial(t, addrs[i], req)
		if p != nil {
			t.Fatal("upgraded")
		}
		body, _ := io.ReadAll(res.Body)
		if res.StatusCode != http.StatusUpgradeRequired || string(body) != want {
			t.Errorf("site %d: %d %q, want 426 %q", i+1, res.StatusCode, body, want)
		}
	}
	// A backend that cannot be dialled: 502 with the reason, through the
	// error page too.
	p, res := wstest.Dial(t, addrs[0], "")
	if p != nil {
		t.Fatal("upgraded")
	}
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusBadGateway || !strings.HasPrefix(string(body), "error page: 502 no backend reachable (127.0.0.1:1: connection refused)") {
		t.Errorf("unreachable: %d %q", res.StatusCode, body)
	}
}
