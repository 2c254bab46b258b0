// Under and TCP find the socket under the wrappers Caddy puts around a
// connection, so that the relay can read it without a buffer while it
// waits and park it in the epoll set. Only wrappers that hold no bytes of
// their own at that point are looked through; any other is kept, and the
// relay then reads through it with a goroutine and a small buffer.
//
// Two wrappers are known, both Caddy's:
//
//   - caddyhttp's hijackedConn, which a handler that hijacks under a
//     response recorder gets (a site with `log` or the `metrics` option):
//     it counts bytes for the access log and the request metrics, which
//     are written when the handler returns, right after the hijack, so its
//     counts are never read again. Recorders nest (the access log's and
//     the metrics' each wrap the connection).
//   - go-proxyproto's Conn, from the proxy_protocol listener wrapper (an
//     L4 balancer in front, docs/FLEET.md): it reads the PROXY header
//     through a small bufio.Reader and drops that reader once its bytes
//     are read, which the HTTP server (or crypto/tls) does with its first
//     read, long before an upgrade. Past that it reads the socket
//     directly, and only its addresses differ, which the relay does not
//     use (the request's RemoteAddr was taken from it).

package quiet

import (
	"net"
	"reflect"

	"github.com/pires/go-proxyproto"
)

const (
	recorderPkg  = "github.com/caddyserver/caddy/v2/modules/caddyhttp"
	recorderName = "hijackedConn"
)

// Under returns the connection under the known wrappers of c that hold no
// bytes, or c itself. A *tls.Conn is returned as it is: TLS holds its own
// records (TCP gives the socket under one).
func Under(c net.Conn) net.Conn {
	for {
		inner := unwrapOne(c)
		if inner == c {
			return c
		}
		c = inner
	}
}

// TCP returns the TCP socket under c's known wrappers.
func TCP(c net.Conn) (*net.TCPConn, bool) {
	tc, ok := Under(c).(*net.TCPConn)
	return tc, ok
}

func unwrapOne(c net.Conn) net.Conn {
	if pc, ok := c.(*proxyproto.Conn); ok {
		if drained(pc) {
			return pc.Raw()
		}
		return c
	}
	return unwrapRecorder(c)
}

// drained reports whether a PROXY protocol connection has dropped its
// header reader: it then reads the socket directly. The field is
// unexported, so it is looked at by reflection; if a version of the
// package names it otherwise, the connection is kept wrapped.
func drained(pc *proxyproto.Conn) bool {
	f := reflect.ValueOf(pc).Elem().FieldByName("bufReader")
	return f.IsValid() && f.Kind() == reflect.Pointer && f.IsNil() && pc.Raw() != nil
}

// unwrapRecorder looks through one caddyhttp.hijackedConn, a struct that
// embeds the net.Conn it counts the bytes of.
func unwrapRecorder(c net.Conn) net.Conn {
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
