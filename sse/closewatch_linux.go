//go:build linux

package sse

import (
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// closeWatcher notices browsers leaving detached streams: one epoll
// instance and one goroutine for all of them, where a goroutine blocked in
// Read per connection would cost each open stream another stack.
type closeWatcher struct {
	epfd int

	mu      sync.Mutex
	next    uint64
	watched map[uint64]func()
}

var sharedCloseWatcher = sync.OnceValues(func() (*closeWatcher, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	w := &closeWatcher{epfd: epfd, watched: map[uint64]func(){}}
	go w.run()
	return w, nil
})

// watchConn calls gone once the peer closes or resets conn, unless stop
// was called first; ok is false when conn has no descriptor to watch.
// Closing conn ends the registration: the kernel drops a descriptor from
// epoll when it closes (the gateway never duplicates socket descriptors),
// so nothing here touches a descriptor number that may have been reused.
func watchConn(conn net.Conn, gone func()) (stop func(), ok bool) {
	w, err := sharedCloseWatcher()
	if err != nil {
		return nil, false
	}
	fd, ok := connFD(conn)
	if !ok {
		return nil, false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.next++
	id := w.next
	// The event carries a registration id, not the descriptor: a
	// descriptor number is reused once closed, an id never is. Level
	// triggered, so a peer that left before this call is still seen.
	ev := unix.EpollEvent{Events: unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: int32(uint32(id)), Pad: int32(uint32(id >> 32))} //nolint:gosec // bit packing
	if err := unix.EpollCtl(w.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return nil, false
	}
	w.watched[id] = gone
	return func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		delete(w.watched, id)
	}, true
}

func (w *closeWatcher) run() {
	events := make([]unix.EpollEvent, 256)
	for {
		n, err := unix.EpollWait(w.epfd, events, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			// Unreachable with a valid epoll descriptor; streams still end
			// when a write to a departed browser fails.
			return
		}
		for _, ev := range events[:n] {
			id := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			w.mu.Lock()
			gone := w.watched[id]
			delete(w.watched, id)
			w.mu.Unlock()
			if gone != nil {
				gone()
			}
		}
	}
}

// connFD is the descriptor of conn's socket, if it has one.
func connFD(conn net.Conn) (int, bool) {
	if tc, ok := conn.(*tls.Conn); ok {
		conn = tc.NetConn()
	}
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return -1, false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return -1, false
	}
	fd := -1
	if err := raw.Control(func(s uintptr) { fd = int(s) }); err != nil { //nolint:gosec // a descriptor fits an int
		return -1, false
	}
	return fd, fd >= 0
}
