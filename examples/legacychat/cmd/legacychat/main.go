// Command legacychat runs the example chat backend: the WebSocket room
// (idle timeout and all), or with -publish the same room as an HTTP-only
// backend for the gateway's mode http.
//
//	legacychat -addr 127.0.0.1:9000 -idle 30s -name "behind the gateway"
//	legacychat -addr 127.0.0.1:9001 -publish http://localhost:2019/websocket/channels/room/messages
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
	name := flag.String("name", "", "the room's name, shown on its page")
	publish := flag.String("publish", "", "serve the room over WebSocket-over-HTTP, publishing to this channel URL of the gateway's push API")
	flag.Parse()
	if *publish != "" {
		log.Printf("legacy chat (HTTP only) on http://%s, publishing to %s", *addr, *publish)
		log.Fatal(http.ListenAndServe(*addr, &legacychat.HTTPRoom{Publish: *publish}))
	}
	log.Printf("legacy chat %q on http://%s (idle timeout %v)", *name, *addr, *idle)
	room := legacychat.New(*idle)
	room.Name, room.Logf = *name, log.Printf
	log.Fatal(http.ListenAndServe(*addr, room))
}
