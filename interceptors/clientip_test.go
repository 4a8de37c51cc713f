package interceptors

import (
	"testing"
)

func TestProxyTrustClientIP(t *testing.T) {
	t.Parallel()
	trust, err := ParseTrustedProxies([]string{"10.0.0.0/8", " 192.0.2.1 ", "", "2001:db8::/32"})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, remote string
		xff          []string
		want         string
	}{
		{"direct caller", "203.0.113.5:4000", nil, "203.0.113.5"},
		{"spoofed XFF from an untrusted peer", "203.0.113.5:4000", []string{"1.2.3.4"}, "203.0.113.5"},
		{"trusted proxy", "10.1.2.3:80", []string{"198.51.100.9"}, "198.51.100.9"},
		{"client-prepended hop ignored", "10.1.2.3:80", []string{"6.6.6.6, 198.51.100.9"}, "198.51.100.9"},
		{"chain of trusted proxies", "10.1.2.3:80", []string{"198.51.100.9, 192.0.2.1", "10.9.9.9"}, "198.51.100.9"},
		{"garbage hop ends trust", "10.1.2.3:80", []string{"198.51.100.9, nonsense"}, "10.1.2.3"},
		{"all hops trusted", "10.1.2.3:80", []string{"10.0.0.1"}, "10.0.0.1"},
		{"trusted proxy without XFF", "192.0.2.1:80", nil, "192.0.2.1"},
		{"ipv6 proxy", "[2001:db8::1]:443", []string{"2001:db8::2, 2a00::7"}, "2a00::7"},
		{"ipv4-mapped peer", "[::ffff:203.0.113.5]:1", nil, "203.0.113.5"},
		{"bare address", "203.0.113.5", nil, "203.0.113.5"},
	}
	for _, tc := range cases {
		if got := trust.ClientIP(tc.remote, tc.xff).String(); got != tc.want {
			t.Errorf("%s: ClientIP = %s, want %s", tc.name, got, tc.want)
		}
	}
	if got := (&ProxyTrust{}).ClientIP("10.1.2.3:1", []string{"1.1.1.1"}).String(); got != "10.1.2.3" {
		t.Errorf("no trusted proxies: %s", got)
	}
	if ParseRemoteAddr("pipe").IsValid() {
		t.Error("unparsable remote address gave an IP")
	}
	for _, bad := range []string{"10.0.0.0/33", "not-an-ip"} {
		if _, err := ParseTrustedProxies([]string{bad}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
