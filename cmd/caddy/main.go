// Command caddy is Caddy with the standard modules and this one, built
// straight from the checkout for development, the Autobahn runs and the
// benchmarks. Users build their Caddy with xcaddy (see the README).
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-websocket/caddy-websocket"
)

func main() {
	caddycmd.Main()
}
