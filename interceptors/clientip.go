package interceptors

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// ProxyTrust resolves a caller's address. The connection's peer address is
// the truth unless that peer is a configured trusted proxy, in which case
// X-Forwarded-For is walked from the right, skipping trusted hops, and the
// first untrusted address is the client. Anything a client prepends to the
// header is to the left of that point and therefore ignored.
type ProxyTrust struct {
	prefixes []netip.Prefix
}

// ParseTrustedProxies builds a [ProxyTrust] from CIDRs or single addresses.
// An empty list trusts no proxy: X-Forwarded-For is never believed.
func ParseTrustedProxies(entries []string) (*ProxyTrust, error) {
	t := &ProxyTrust{}
	for _, entry := range entries {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		if strings.Contains(entry, "/") {
			p, err := netip.ParsePrefix(entry)
			if err != nil {
				return nil, fmt.Errorf("trusted proxy %q: %w", entry, err)
			}
			t.prefixes = append(t.prefixes, p.Masked())
			continue
		}
		addr, err := netip.ParseAddr(entry)
		if err != nil {
			return nil, fmt.Errorf("trusted proxy %q: %w", entry, err)
		}
		addr = addr.Unmap()
		t.prefixes = append(t.prefixes, netip.PrefixFrom(addr, addr.BitLen()))
	}
	return t, nil
}

// Trusts reports whether addr is a configured trusted proxy.
func (t *ProxyTrust) Trusts(addr netip.Addr) bool { return t.trusted(addr) }

func (t *ProxyTrust) trusted(addr netip.Addr) bool {
	for _, p := range t.prefixes {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// ClientIP returns the caller's address given the connection's remote
// address ("host:port", as in http.Request.RemoteAddr) and the values of
// every X-Forwarded-For header in order. The zero Addr means the remote
// address could not be parsed.
func (t *ProxyTrust) ClientIP(remoteAddr string, forwardedFor []string) netip.Addr {
	peer := ParseRemoteAddr(remoteAddr)
	if !peer.IsValid() || t == nil || len(t.prefixes) == 0 || !t.trusted(peer) {
		return peer
	}
	client := peer
	for i := len(forwardedFor) - 1; i >= 0; i-- {
		hops := strings.Split(forwardedFor[i], ",")
		for j := len(hops) - 1; j >= 0; j-- {
			addr, err := netip.ParseAddr(strings.TrimSpace(hops[j]))
			if err != nil {
				// A garbled hop ends the chain of trust: the last address
				// we could verify is the best answer.
				return client
			}
			client = addr.Unmap()
			if !t.trusted(client) {
				return client
			}
		}
	}
	return client
}

// ParseRemoteAddr parses "host:port" or a bare address, returning the zero
// Addr when it is neither.
func ParseRemoteAddr(remoteAddr string) netip.Addr {
	if ap, err := netip.ParseAddrPort(remoteAddr); err == nil {
		return ap.Addr().Unmap()
	}
	host := remoteAddr
	if h, _, err := net.SplitHostPort(remoteAddr); err == nil {
		host = h
	}
	addr, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}
	}
	return addr.Unmap()
}
