package websocket

import (
	"net"
	"reflect"
)

// recorderConn is the type of the connection Caddy hands a handler that
// hijacks under a response recorder: caddyhttp's hijackedConn, which wraps
// the socket to count the bytes the access log and metrics report. A site
// with `log` or the `metrics` option always gets it.
const (
	recorderPkg  = "github.com/caddyserver/caddy/v2/modules/caddyhttp"
	recorderName = "hijackedConn"
)

// unwrapRecorder returns the connection under Caddy's byte-counting
// hijack wrapper, so that the relay reads the socket itself (without a
// buffer while it waits) and its quiet legs can park. Nothing is lost: the
// access log entry and the request metrics are written when the handler
// returns, right after the hijack, so the wrapper's counts are never read
// again (the gateway's own byte counters go to its close log and metrics).
// Any other wrapper is kept: it may hold bytes of its own (a PROXY
// protocol header reader, say), and the relay then reads through it with a
// goroutine and a small buffer.
//
// Recorders nest (the access log's and the metrics' each wrap the
// connection), so it unwraps as many as there are.
func unwrapRecorder(c net.Conn) net.Conn {
	for {
		inner := unwrapOne(c)
		if inner == c {
			return c
		}
		c = inner
	}
}

func unwrapOne(c net.Conn) net.Conn {
	v := reflect.ValueOf(c)
	if v.Kind() != reflect.Pointer || v.IsNil() {
		return c
	}
	t := v.Type().Elem()
	if t.Kind() != reflect.Struct || t.PkgPath() != recorderPkg || t.Name() != recorderName {
		return c
	}
	f, ok := t.FieldByName("Conn")
	if !ok || !f.Anonymous || f.Type != reflect.TypeFor[net.Conn]() {
		return c
	}
	inner, ok := v.Elem().FieldByIndex(f.Index).Interface().(net.Conn)
	if !ok || inner == nil {
		return c
	}
	return inner
}
