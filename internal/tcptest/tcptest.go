// Package tcptest gives the unit tests of the read path real loopback TCP
// connections: what lazyread and park do is only defined on real sockets.
package tcptest

import (
	"net"
	"testing"
)

// Pair returns both ends of a loopback TCP connection, closed when the
// test ends: near is the accepted side, far the dialling one.
func Pair(t testing.TB) (near, far net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	far, err = net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	near, err = l.Accept()
	if err != nil {
		far.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { near.Close(); far.Close() })
	return near, far
}
