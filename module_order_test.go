package websocket_test

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/caddy-websocket/caddy-websocket/internal/wstest"
)

// TestBesideResponders: written beside a directive that responds, or
// beside a catch-all handle block, websocket still takes the upgrades
// (101 through the gateway, echoed) and the plain requests get the other
// handler's answer.
func TestBesideResponders(t *testing.T) {
	echo := echoBackend(t)
	cases := map[string]string{
		"respond": `websocket %s
		respond "plain" 200`,
		"handle": `websocket %s
		handle {
			respond "plain" 200
		}`,
		"file_server": `websocket %s
		root * {ROOT}
		file_server`,
	}
	for name, body := range cases {
		t.Run(name, func(t *testing.T) {
			root := t.TempDir()
			if err := os.WriteFile(root+"/index.html", []byte("plain"), 0o644); err != nil {
				t.Fatal(err)
			}
			site := strings.ReplaceAll(fmt.Sprintf(body, hostOf(echo)), "{ROOT}", root)
			addr := wstest.StartCaddy(t, "http://127.0.0.1:{PORT} {\n\t\t"+site+"\n\t}")
			c := dialWS(t, "ws://"+addr+"/")
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if err := c.WriteMessage(websocket.TextMessage, []byte("hi")); err != nil {
				t.Fatal(err)
			}
			if _, got, err := c.ReadMessage(); err != nil || string(got) != "hi" {
				t.Fatalf("echo: %q %v", got, err)
			}
			res, err := http.Get("http://" + addr + "/")
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != 200 || string(b) != "plain" {
				t.Fatalf("plain GET: %d %q", res.StatusCode, b)
			}
		})
	}
}
