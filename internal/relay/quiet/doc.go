// Package quiet is what lets a quiet relay leg hold no goroutine and no
// buffer: a Reader that borrows a buffer only for a read that has bytes
// (read.go), a Waiter that parks the leg in one epoll set shared by the
// process, its next policy event on a runtime timer (park.go), and the
// look through Caddy's connection wrappers to the socket under them
// (socket.go). A busy leg reads as any Go program does; a leg that cannot
// park (not Linux, not TCP underneath, an HTTP/2 or HTTP/3 stream) keeps
// its goroutine and a small buffer.
package quiet
