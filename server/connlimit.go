package server

import (
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/flowgate/flowgate/interceptors"
)

// connLimitListener caps the connections open at once from one client
// address. Past the cap a new connection is closed as soon as it is
// accepted, before net/http spends a goroutine or a buffer on it. IPv6
// callers are counted by /64, the block one host usually holds; trusted
// proxies, which carry many callers each, are not counted.
type connLimitListener struct {
	net.Listener
	open    *interceptors.Tally[netip.Addr]
	proxies *interceptors.ProxyTrust
	logger  *slog.Logger
	// lastWarn throttles the log line about refused connections.
	lastWarn atomic.Int64
}

// limitListener wraps ln with the per-address connection cap, if any.
func (s *security) limitListener(ln net.Listener) net.Listener {
	if s.cfg.MaxConnsPerIP <= 0 {
		return ln
	}
	return &connLimitListener{Listener: ln, open: interceptors.NewTally[netip.Addr](s.cfg.MaxConnsPerIP),
		proxies: s.proxies, logger: s.logger}
}

func (l *connLimitListener) Accept() (net.Conn, error) {
	for {
		conn, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		addr := interceptors.ParseRemoteAddr(conn.RemoteAddr().String())
		if !addr.IsValid() || l.proxies.Trusts(addr) {
			return conn, nil
		}
		key := connKey(addr)
		if l.open.Acquire(key) {
			return &limitedConn{Conn: conn, release: func() { l.open.Release(key) }}, nil
		}
		_ = conn.Close()
		l.warn(addr)
	}
}

// connKey is what connections are counted by: the address, or its /64.
func connKey(addr netip.Addr) netip.Addr {
	if addr.Is4() {
		return addr
	}
	prefix, _ := addr.Prefix(64)
	return prefix.Addr()
}

// warn logs refused connections, at most once a minute.
func (l *connLimitListener) warn(addr netip.Addr) {
	now := time.Now().UnixNano()
	last := l.lastWarn.Load()
	if now-last < int64(time.Minute) || !l.lastWarn.CompareAndSwap(last, now) {
		return
	}
	l.logger.Warn("refusing connections over the per-address cap (logged once a minute)",
		slog.String("client_ip", addr.String()), slog.Int("max_conns_per_ip", l.open.Max()))
}

// limitedConn gives its place back when closed, once.
type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// SyscallConn exposes the socket, which the SSE bridge watches for the
// browser leaving a stream it took over.
func (c *limitedConn) SyscallConn() (syscall.RawConn, error) {
	if sc, ok := c.Conn.(syscall.Conn); ok {
		return sc.SyscallConn()
	}
	return nil, syscall.EINVAL
}
