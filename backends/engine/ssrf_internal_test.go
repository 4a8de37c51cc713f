package engine

import (
	"net/netip"
	"testing"
)

// TestBlockedAddressForms: every spelling of an internal address is
// refused — zoned, IPv4-mapped, IPv4-compatible, 6to4, NAT64, SIIT and
// Teredo forms carry a loopback or private IPv4 address as surely as the
// plain one does.
func TestBlockedAddressForms(t *testing.T) {
	t.Parallel()
	cases := []struct {
		addr    string
		blocked bool
	}{
		{"127.0.0.1", true},
		{"::1", true},
		{"::1%lo", true},
		{"::1%1", true},
		{"fe80::1%eth0", true},
		{"fd00::2%eth0", true},
		{"::ffff:127.0.0.1", true},
		{"::ffff:169.254.169.254", true},
		{"::127.0.0.1", true},       // IPv4-compatible
		{"::10.0.0.1", true},        // IPv4-compatible
		{"::8.8.8.8", true},         // IPv4-compatible is deprecated: never dialled
		{"2002:7f00:1::", true},     // 6to4 of 127.0.0.1
		{"2002:a9fe:a9fe::1", true}, // 6to4 of 169.254.169.254
		{"2002:c0a8:101::%lo", true},
		{"64:ff9b::7f00:1", true},                      // NAT64 of 127.0.0.1
		{"64:ff9b::a00:1%lo", true},                    // NAT64 of 10.0.0.1, zoned
		{"64:ff9b:1::a00:1", true},                     // local-use NAT64
		{"::ffff:0:7f00:1", true},                      // SIIT IPv4-translated 127.0.0.1
		{"2001:0:4136:e378:8000:63bf:3fff:fdd2", true}, // Teredo
		{"fec0::1", true},                              // deprecated site-local
		{"8.8.8.8", false},
		{"2606:4700:4700::1111", false},
		{"2002:808:808::1", false}, // 6to4 of a public address
		{"64:ff9b::808:808", false},
	}
	for _, tc := range cases {
		a := netip.MustParseAddr(tc.addr)
		if got := blocked(a); got != tc.blocked {
			t.Errorf("blocked(%s) = %v, want %v", tc.addr, got, tc.blocked)
		}
	}
}
