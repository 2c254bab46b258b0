// Command legacychat runs the example chat backend.
//
//	legacychat -addr 127.0.0.1:9000 -idle 30s
package main

import (
	"flag"
	"log"
	"net/http"
	"time"

	"github.com/caddy-websocket/caddy-websocket/examples/legacychat"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:9000", "listen address")
	idle := flag.Duration("idle", 30*time.Second, "drop a member after this long without a frame")
	flag.Parse()
	log.Printf("legacy chat on http://%s (idle timeout %v)", *addr, *idle)
	log.Fatal(http.ListenAndServe(*addr, legacychat.New(*idle)))
}
