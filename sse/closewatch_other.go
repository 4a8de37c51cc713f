//go:build !linux

package sse

import "net"

// watchConn is not available here: detached streams watch their
// connection with a reader goroutine each.
func watchConn(net.Conn, func()) (stop func(), ok bool) { return nil, false }
