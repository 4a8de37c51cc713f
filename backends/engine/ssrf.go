package engine

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
	"time"
)

// blockedPrefixes are the destinations http_request refuses unless a host
// is allowlisted: loopback, private, link-local (cloud metadata lives at
// 169.254.169.254 and fd00:ec2::254), shared and reserved ranges.
var blockedPrefixes = mustPrefixes(
	"0.0.0.0/8",       // "this" network
	"10.0.0.0/8",      // private
	"100.64.0.0/10",   // carrier-grade NAT
	"127.0.0.0/8",     // loopback
	"169.254.0.0/16",  // link-local, metadata
	"172.16.0.0/12",   // private
	"192.0.0.0/24",    // IETF protocol assignments
	"192.0.2.0/24",    // documentation
	"192.88.99.0/24",  // 6to4 relay anycast
	"192.168.0.0/16",  // private
	"198.18.0.0/15",   // benchmarking
	"198.51.100.0/24", // documentation
	"203.0.113.0/24",  // documentation
	"224.0.0.0/4",     // multicast
	"240.0.0.0/4",     // reserved, broadcast
	"::/128",          // unspecified
	"::1/128",         // loopback
	"100::/64",        // discard
	"2001:db8::/32",   // documentation
	"fc00::/7",        // unique local, includes fd00:ec2::254
	"fe80::/10",       // link-local
	"fec0::/10",       // site-local, deprecated but still routed on some networks
	"ff00::/8",        // multicast
)

func mustPrefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

// errBlockedAddress is returned (wrapped) when a destination is refused.
var errBlockedAddress = errors.New("destination not allowed")

// allowlist opens specific hosts (by name or address) or address ranges to
// http_request although they resolve to blocked addresses.
type allowlist struct {
	hosts    map[string]bool
	prefixes []netip.Prefix
}

func newAllowlist(entries []string) (*allowlist, error) {
	al := &allowlist{hosts: map[string]bool{}}
	for _, e := range entries {
		e = strings.ToLower(strings.TrimSpace(e))
		switch {
		case e == "":
			return nil, errors.New("empty entry in HTTPAllowHosts")
		case strings.Contains(e, "/"):
			p, err := netip.ParsePrefix(e)
			if err != nil {
				return nil, fmt.Errorf("HTTPAllowHosts entry %q is not a valid CIDR range: %w", e, err)
			}
			al.prefixes = append(al.prefixes, p.Masked())
		default:
			if strings.ContainsAny(e, ":") && !strings.HasPrefix(e, "[") {
				if _, err := netip.ParseAddr(e); err != nil {
					return nil, fmt.Errorf("HTTPAllowHosts entry %q: give a host name or address without a port", e)
				}
			}
			al.hosts[strings.Trim(e, "[]")] = true
		}
	}
	return al, nil
}

func (al *allowlist) host(h string) bool {
	return al.hosts[strings.ToLower(strings.Trim(h, "[]"))]
}

func (al *allowlist) addr(a netip.Addr) bool {
	return inAny(al.prefixes, a.WithZone("").Unmap())
}

// deprecatedTunnels are refused whatever they carry: IPv4-compatible
// addresses (deprecated, and ::1 and :: live there), local-use NAT64 and
// Teredo, whose obfuscated client address no allowlist can reason about.
var deprecatedTunnels = mustPrefixes(
	"::/96",          // IPv4-compatible
	"64:ff9b:1::/48", // local-use NAT64
	"2001::/32",      // Teredo
)

// v4Carriers are IPv6 forms that route to an IPv4 address embedded at a
// known offset (in bytes of the 16-byte form).
var v4Carriers = []struct {
	prefix netip.Prefix
	offset int
}{
	{netip.MustParsePrefix("64:ff9b::/96"), 12},    // NAT64 well-known prefix
	{netip.MustParsePrefix("::ffff:0:0:0/96"), 12}, // SIIT IPv4-translated
	{netip.MustParsePrefix("2002::/16"), 2},        // 6to4
}

// blocked reports whether a resolved address is refused. The zone is
// dropped first: netip.Prefix.Contains is false for every zoned address, so
// "::1%lo" would otherwise pass as public.
func blocked(a netip.Addr) bool {
	a = a.WithZone("").Unmap()
	if inAny(deprecatedTunnels, a) {
		return true
	}
	for _, c := range v4Carriers {
		if c.prefix.Contains(a) {
			b := a.As16()
			if inAny(blockedPrefixes, netip.AddrFrom4([4]byte(b[c.offset:c.offset+4]))) {
				return true
			}
		}
	}
	return inAny(blockedPrefixes, a)
}

func inAny(prefixes []netip.Prefix, a netip.Addr) bool {
	for _, p := range prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// guardedDialer dials only permitted destinations. The check runs in the
// dialer's Control hook, that is on the address actually connected to after
// DNS resolution, so a name that resolves (or re-resolves) to a private
// address is refused, and so is every hop of a redirect.
type guardedDialer struct {
	allow *allowlist
	base  net.Dialer
}

func (g *guardedDialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return nil, err
	}
	d := g.base
	if g.allow.host(host) {
		return d.DialContext(ctx, network, address)
	}
	d.Control = func(_, addr string, _ syscall.RawConn) error {
		// The error names neither the address nor the host: the caller
		// reports the host it asked for, and what a name resolved to is
		// exactly what an attacker probing the network wants to learn.
		ap, err := netip.ParseAddrPort(addr)
		if err != nil || blocked(ap.Addr()) && !g.allow.addr(ap.Addr()) {
			return errBlockedAddress
		}
		return nil
	}
	return d.DialContext(ctx, network, address)
}

const maxRedirects = 5

// newHTTPClient builds the client of http_request nodes: no proxy from the
// environment (it would bypass the address check), guarded dials, and
// redirects limited to http(s) and a few hops.
func newHTTPClient(allow *allowlist) *http.Client {
	dialer := &guardedDialer{allow: allow, base: net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}}
	transport := &http.Transport{
		Proxy:                 nil,
		DialContext:           dialer.DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          64,
		MaxIdleConnsPerHost:   8,
		IdleConnTimeout:       60 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 0, // the node's own timeout bounds the whole request
	}
	return &http.Client{
		Transport: transport,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= maxRedirects {
				return fmt.Errorf("stopped after %d redirects", maxRedirects)
			}
			if req.URL.Scheme != "http" && req.URL.Scheme != "https" {
				return fmt.Errorf("redirect to a %q URL is not followed", req.URL.Scheme)
			}
			return nil
		},
	}
}
