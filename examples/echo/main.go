// Command echo is a WebSocket echo server on gorilla/websocket, with
// permessage-deflate and UTF-8 checks: the backend for the Autobahn|Testsuite runs and the
// benchmarks. Every message comes back with the type it came with. A POST
// of WebSocket-over-HTTP events (the gateway's mode http) is echoed too:
// OPEN with OPEN, every TEXT, BINARY and CLOSE event as it came.
//
//	echo -addr 127.0.0.1:9001
package main

import (
	"flag"
	"io"
	"log"
	"net/http"
	"time"
	"unicode/utf8"

	"github.com/gorilla/websocket"

	"github.com/caddy-websocket/caddy-websocket/internal/overhttp"
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
		if r.Method == http.MethodPost && r.Header.Get("Content-Type") == overhttp.ContentType {
			echoEvents(w, r)
			return
		}
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

func echoEvents(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 256<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	events, err := overhttp.Decode(body, 0)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var out []byte
	for _, e := range events {
		switch e.Type {
		case overhttp.Open, overhttp.Text, overhttp.Binary, overhttp.Close:
			out = overhttp.Append(out, e)
		}
	}
	w.Header().Set("Content-Type", overhttp.ContentType)
	w.Write(out)
}
