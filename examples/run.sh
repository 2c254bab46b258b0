#!/usr/bin/env bash
# Builds Caddy with this module (xcaddy) and the legacy chat backend, then
# runs the chat behind the gateway (http://127.0.0.1:8080) and behind stock
# reverse_proxy (http://127.0.0.1:8081). Ctrl-C stops both. With TLS=1, the
# chat over HTTPS instead (https://localhost:8443, tls internal, HTTP/1.1,
# HTTP/2 and HTTP/3; examples/Caddyfile.local-tls).
#
#   IDLE=30s bash examples/run.sh    # the rooms' idle timeout (IDLE=5s to see it sooner)
#   TLS=1 bash examples/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bin
if ! command -v go >/dev/null; then
	echo "Go is needed (https://go.dev/doc/install)" >&2
	exit 1
fi
echo "building caddy with the websocket module (xcaddy)..."
go run github.com/caddyserver/xcaddy/cmd/xcaddy@v0.4.5 build v2.11.9 \
	--with github.com/caddy-websocket/caddy-websocket@v0.0.0=. --output bin/caddy
go build -o bin/legacychat ./examples/legacychat/cmd/legacychat

bin/legacychat -addr 127.0.0.1:9000 -idle "${IDLE:-30s}" -name "behind the gateway" &
chat=$!
bin/legacychat -addr 127.0.0.1:9002 -idle "${IDLE:-30s}" -name "behind stock reverse_proxy" &
stockchat=$!
bin/legacychat -addr 127.0.0.1:9001 -publish http://localhost:2019/websocket/channels/room/messages &
httpchat=$!
trap 'kill $chat $stockchat $httpchat 2>/dev/null' EXIT
if [ -n "${TLS:-}" ]; then
	echo
	echo "  gateway over HTTPS:    https://localhost:8443  (certificate from Caddy's internal CA)"
	echo "  for WebSockets over HTTP/2 in Chromium: GODEBUG=http2xconnect=1 TLS=1 bash examples/run.sh"
	echo
	bin/caddy run --config examples/Caddyfile.local-tls --adapter caddyfile
	exit
fi
echo
echo "  gateway:               http://127.0.0.1:8080  (its own room)"
echo "  stock reverse_proxy:   http://127.0.0.1:8081  (its own room)"
echo "  HTTP-only backend:     http://127.0.0.1:8082  (mode http, the room is a push channel)"
echo "  join both as two members each, stay silent for ${IDLE:-30s} or more, then chat."
echo
bin/caddy run --config examples/Caddyfile --adapter caddyfile
