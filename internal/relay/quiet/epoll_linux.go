package quiet

import (
	"os"
	"sync"
	"syscall"
)

const supported = true

// The epoll set, and the waiter of each file descriptor in it. Events carry
// the descriptor; a stale event (for a descriptor closed and reused since)
// finds the new owner, whose reader then looks at its socket for nothing,
// which is harmless.
var (
	epOnce sync.Once
	epFD   = -1
	epErr  error

	tableMu sync.RWMutex
	table   []*Waiter // by descriptor
)

// events asks for readable bytes and hang-ups (errors come regardless),
// level-triggered, once per arming.
const events = syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT

func start() {
	epFD, epErr = syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if epErr != nil {
		epErr = os.NewSyscallError("epoll_create1", epErr)
		return
	}
	// The epoll set is itself pollable: put it in Go's network poller, so
	// the loop waits there like any connection (no thread blocked in
	// epoll_wait, and a wake-up is scheduled like any network read).
	if epErr = syscall.SetNonblock(epFD, true); epErr != nil {
		epErr = os.NewSyscallError("setnonblock", epErr)
		return
	}
	raw, err := os.NewFile(uintptr(epFD), "park-epoll").SyscallConn()
	if err != nil {
		epErr = err
		return
	}
	go loop(raw)
}

// loop is the one goroutine that takes events from the epoll set, for the
// life of the process: it only starts turns, so it never waits behind a
// relay.
func loop(raw syscall.RawConn) {
	var evs [128]syscall.EpollEvent
	for {
		raw.Read(func(fd uintptr) bool {
			for {
				n, err := syscall.EpollWait(int(fd), evs[:], 0)
				if err == syscall.EINTR {
					continue
				}
				if n <= 0 {
					return false // drained: wait in the poller for more
				}
				tableMu.RLock()
				for _, ev := range evs[:n] {
					if fd := int(ev.Fd); fd < len(table) {
						if w := table[fd]; w != nil {
							w.ready()
						}
					}
				}
				tableMu.RUnlock()
				if n < len(evs) {
					// Drained. Events that come after epoll_wait make the
					// set readable again, which wakes the poller (edge).
					return false
				}
			}
		})
	}
}

func add(w *Waiter) error {
	epOnce.Do(start)
	if epErr != nil {
		return epErr
	}
	fd := int(w.fd)
	tableMu.Lock()
	if fd >= len(table) {
		grown := make([]*Waiter, max(fd+1, 2*len(table), 1024))
		copy(grown, table)
		table = grown
	}
	table[fd] = w
	tableMu.Unlock()
	ev := syscall.EpollEvent{Events: events, Fd: w.fd}
	if err := syscall.EpollCtl(epFD, syscall.EPOLL_CTL_ADD, fd, &ev); err != nil {
		tableMu.Lock()
		table[fd] = nil
		tableMu.Unlock()
		return os.NewSyscallError("epoll_ctl", err)
	}
	return nil
}

func rearm(fd int) error {
	ev := syscall.EpollEvent{Events: events, Fd: int32(fd)}
	if err := syscall.EpollCtl(epFD, syscall.EPOLL_CTL_MOD, fd, &ev); err != nil {
		return os.NewSyscallError("epoll_ctl", err)
	}
	return nil
}

func remove(w *Waiter, fd int) {
	syscall.EpollCtl(epFD, syscall.EPOLL_CTL_DEL, fd, nil)
	tableMu.Lock()
	if fd < len(table) && table[fd] == w {
		table[fd] = nil
	}
	tableMu.Unlock()
}
