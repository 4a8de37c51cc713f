package server

import (
	"log/slog"
	"net"
	"testing"

	"github.com/flowgate/flowgate/interceptors"
)

// fakeConn is a connection from a chosen address.
type fakeConn struct {
	net.Conn
	remote net.Addr
	closed bool
}

func (c *fakeConn) RemoteAddr() net.Addr { return c.remote }
func (c *fakeConn) Close() error         { c.closed = true; return nil }

// queueListener accepts the queued connections in order.
type queueListener struct {
	net.Listener
	queue []*fakeConn
}

func (l *queueListener) Accept() (net.Conn, error) {
	if len(l.queue) == 0 {
		return nil, net.ErrClosed
	}
	c := l.queue[0]
	l.queue = l.queue[1:]
	return c, nil
}

func connFrom(t *testing.T, addr string) *fakeConn {
	t.Helper()
	tcp, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return &fakeConn{remote: tcp}
}

// TestConnectionCapCountsIPv6ByBlockAndSparesProxies: addresses of one
// IPv6 /64 share a cap, trusted proxies have none, and closing a counted
// connection frees its place.
func TestConnectionCapCountsIPv6ByBlockAndSparesProxies(t *testing.T) {
	t.Parallel()
	proxies, err := interceptors.ParseTrustedProxies([]string{"10.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	conns := []*fakeConn{
		connFrom(t, "[2001:db8:1:2::1]:1000"),
		connFrom(t, "[2001:db8:1:2::99]:1001"), // same /64: over the cap of one
		connFrom(t, "[2001:db8:1:3::1]:1002"),  // another /64
		connFrom(t, "10.0.0.1:1003"),
		connFrom(t, "10.0.0.1:1004"), // a trusted proxy: not counted
	}
	sec := &security{cfg: SecurityConfig{MaxConnsPerIP: 1}, proxies: proxies, logger: slog.New(slog.DiscardHandler)}
	ln := sec.limitListener(&queueListener{queue: append([]*fakeConn(nil), conns...)}, false)
	var accepted []net.Conn
	for {
		c, err := ln.Accept()
		if err != nil {
			break
		}
		accepted = append(accepted, c)
	}
	if len(accepted) != 4 || !conns[1].closed {
		t.Fatalf("accepted %d connections (second closed: %v), want 4 with the second refused", len(accepted), conns[1].closed)
	}
	_ = accepted[0].Close()
	ln.(*connLimitListener).Listener = &queueListener{queue: []*fakeConn{connFrom(t, "[2001:db8:1:2::5]:1005")}}
	if _, err := ln.Accept(); err != nil {
		t.Errorf("a connection after its block's only one closed: %v", err)
	}
}
