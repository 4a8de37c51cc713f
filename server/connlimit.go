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
	max     int
	proxies *interceptors.ProxyTrust
	logger  *slog.Logger

	mu   sync.Mutex
	open map[netip.Addr]int
	// lastWarn throttles the log line about refused connections.
	lastWarn atomic.Int64
}

// limitListener wraps ln with the per-address connection cap, if any.
func (s *security) limitListener(ln net.Listener) net.Listener {
	if s.cfg.MaxConnsPerIP <= 0 {
		return ln
	}
	return &connLimitListener{Listener: ln, max: s.cfg.MaxConnsPerIP, proxies: s.proxies,
		logger: s.logger, open: map[netip.Addr]int{}}
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
		if l.acquire(key) {
			return &limitedConn{Conn: conn, release: func() { l.release(key) }}, nil
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

func (l *connLimitListener) acquire(key netip.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open[key] >= l.max {
		return false
	}
	l.open[key]++
	return true
}

func (l *connLimitListener) release(key netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open[key]--; l.open[key] <= 0 {
		delete(l.open, key)
	}
}

// warn logs refused connections, at most once a minute.
func (l *connLimitListener) warn(addr netip.Addr) {
	now := time.Now().UnixNano()
	last := l.lastWarn.Load()
	if now-last < int64(time.Minute) || !l.lastWarn.CompareAndSwap(last, now) {
		return
	}
	l.logger.Warn("refusing connections over the per-address cap (logged once a minute)",
		slog.String("client_ip", addr.String()), slog.Int("max_conns_per_ip", l.max))
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
