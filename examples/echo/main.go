// Command echo is a WebSocket echo server on gorilla/websocket, with
// permessage-deflate and UTF-8 checks: the backend for the Autobahn|Testsuite runs and the
// benchmarks. Every message comes back with the type it came with.
//
//	echo -addr 127.0.0.1:9001
package main

import (
	"flag"
	"log"
	"net/http"
	"time"
	"unicode/utf8"

	"github.com/gorilla/websocket"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:9001", "listen address")
	flag.Parse()
	up := websocket.Upgrader{
		CheckOrigin:       func(*http.Request) bool { return true },
		EnableCompression: true,
	}
	log.Printf("echo on ws://%s", *addr)
	log.Fatal(http.ListenAndServe(*addr, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		c.SetReadLimit(64 << 20)
		for {
			typ, msg, err := c.ReadMessage()
			if err != nil {
				return
			}
			if typ == websocket.TextMessage && !utf8.Valid(msg) {
				// gorilla leaves UTF-8 to the application.
				c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseInvalidFramePayloadData, "invalid UTF-8"), time.Now().Add(time.Second))
				return
			}
			if err := c.WriteMessage(typ, msg); err != nil {
				return
			}
		}
	})))
}
