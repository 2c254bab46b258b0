package quiet

import (
	"crypto/tls"
	"net"

	"golang.org/x/sys/unix"
)

// Written reports how many bytes the gateway has written into c's TCP
// socket since it opened (what the peer acknowledged plus what waits in
// the send queue), and Acked how many of them the peer's TCP acknowledged
// (TCP_INFO's tcpi_bytes_acked): bytes the peer's kernel has, whatever
// became of the network since. Over TLS they count the records on the
// wire. ok is false when c has no TCP socket under it (an HTTP/2 or
// HTTP/3 stream, an unknown wrapper) or the socket is closed.
func Written(c net.Conn) (n uint64, ok bool) { return counts(c, true) }

// counts reads what the peer acknowledged, plus, with queued, what waits
// in the send queue.
func counts(c net.Conn, queued bool) (n uint64, ok bool) {
	ok = control(c, func(fd int) bool {
		info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			return false
		}
		n = info.Bytes_acked
		if queued {
			q, err := unix.IoctlGetInt(fd, unix.SIOCOUTQ)
			if err != nil || q < 0 {
				return false
			}
			n += uint64(q)
		}
		return true
	})
	return n, ok
}

// Acked is what c's peer acknowledged; see Written.
func Acked(c net.Conn) (n uint64, ok bool) { return counts(c, false) }

func control(c net.Conn, f func(fd int) bool) bool {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	tcp, ok := TCP(c)
	if !ok {
		return false
	}
	raw, err := tcp.SyscallConn()
	if err != nil {
		return false
	}
	ok = false
	if raw.Control(func(fd uintptr) { ok = f(int(fd)) }) != nil {
		return false
	}
	return ok
}
